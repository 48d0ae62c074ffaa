"""The engine's domain errors. Library code raises them with a sentence a user can act on and,
where one input is at fault, its name (`field`: "model", "data", "lora_rank", ...); only the
command line (`training/cli.py`) turns that into an option name and an exit code
(`training.result`)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: a model, dataset, adapter, clip or parameter that cannot be used. Raised before
    any training starts; the CLI prints it as one line `error: --option ...` and exits 2."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message
