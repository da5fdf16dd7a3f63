"""What a study shows: the Markdown, HTML and CSV report, figures and t-SNE. It reads
results; nothing below it reads the report."""
