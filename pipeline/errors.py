"""The two error families: the user's and the infrastructure's."""


class PipelineError(Exception):
    """Base class; `str()` is a message that says what to do."""


class UserError(PipelineError):
    """Bad input: a malformed config, a patch that does not apply, a missing file."""


class ConfigError(UserError):
    """A pipeline.yaml problem, located by key path and line."""

    def __init__(self, path: str, message: str, source: str = "", line: int | None = None):
        self.path = path
        self.line = line
        where = f" ({source}:{line})" if source and line else (f" ({source})" if source else "")
        super().__init__(f"{path}: {message}{where}" if path else f"{message}{where}")


class InfraError(PipelineError):
    """The machinery failed: QEMU died, SSH was lost, a tool is missing."""
