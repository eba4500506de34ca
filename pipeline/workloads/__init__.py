"""Workloads as plug-ins: the flash VMM and the other kinds (KVM selftests, commands), each with its settings,
argv and output parser. Never imports config or a stage.
"""
