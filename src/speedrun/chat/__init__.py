"""Chat: the template, the generation engine with its calculator, tasks and the pipeline."""
