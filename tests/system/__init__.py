"""Whole-program checks: soundness against brute force, fuzzing, bad inputs, the command line in
subprocesses, time limits and the package's layering."""
