"""The defensive perturbations by name: what the command line lists, without PyTorch."""

PROACTIVE = ("ce", "margin", "robustify", "robustify-label-free")  # know the true label
REACTIVE = ("anti-adversary", "hedge")  # part of the model at test time, label-free
DEFENSES = PROACTIVE + REACTIVE
ROBUSTIFY = ("robustify", "robustify-label-free")
LABEL_FREE = REACTIVE + ("robustify-label-free",)  # methods that never read the true label
