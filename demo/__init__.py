"""actgen-demo: the whole active loop from one command, and its report."""
