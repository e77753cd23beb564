"""actgen.builder"""
