"""Where test hosts run: host specs, accelerators, the machine probe, local and SSH executors, the pool, commands
into a booted test host.
"""
