"""Where and how the work runs: devices and precision, threads, torch.distributed, the
measured chunk size, run directories and atomic files, progress bars."""
