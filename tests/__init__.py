"""bnnmip's test suite, laid out as the package: a test file at the top tests a top-level module of
bnnmip/, a folder tests a subpackage, and system/ holds whole-program checks."""
