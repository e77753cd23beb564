"""actgen-fit-generator: fit a text-conditional diffusion generator on a labeled data set (or LoRA on SD)."""
