"""Project exceptions: every error a user can cause says what is wrong and what to do."""


class WebRwkvError(Exception):
    """Base class for all errors webrwkv raises on purpose."""


class ModelFormatError(WebRwkvError):
    """The model file is not a usable safetensors/RWKV checkpoint."""


class SourceError(WebRwkvError):
    """Reading bytes from a file or an HTTP server failed."""


class TokenizerError(WebRwkvError):
    """The vocabulary file is malformed or does not fit the model."""


class GpuError(WebRwkvError):
    """The GPU adapter is missing, too small, or was lost."""


class DeviceLostError(GpuError):
    """The GPU device was lost while in use."""


class SamplingError(WebRwkvError):
    """Sampling parameters are out of range, every token is banned, or the logits are not numbers."""


class ModelCardError(WebRwkvError):
    """A model card (<model>.card.json) is not valid JSON or has wrong fields."""


class RequestError(WebRwkvError):
    """An API request the server will not run as sent: `status` is its HTTP code, `param` the field at fault."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


class ServerBusyError(RequestError):
    """Every slot is busy and the queue of waiting requests is full: try again shortly."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 503, None, "queue_full")
