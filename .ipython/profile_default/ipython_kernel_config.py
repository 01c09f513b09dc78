# Project-local IPython profile (the Makefile sets IPYTHONDIR=.ipython).
# ipykernel 7 warns at every kernel start that it runs over TCP without encryption
# (kernels here are local, started by papermill/nbval); keep logs to real errors.
c = get_config()  # noqa: F821
c.IPKernelApp.log_level = "ERROR"
