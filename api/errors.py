"""OpenAI-style error responses."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def redis_unavailable(retry_after_s: int, message: str = "the request queue (Redis) is unreachable; retry later",
                      ) -> APIError:
    """503 + Retry-After: what every route answers while Redis is unreachable (docs/operations.md)."""
    return APIError(503, message, type="server_error", code="redis_unavailable",
                    headers={"Retry-After": str(retry_after_s)})


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def validation_error(errors) -> APIError:
    """The 400 for FastAPI's parameter validation errors (its 422 otherwise), naming the first bad parameter."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ())]
    param = ".".join(loc[1:] if loc and loc[0] in ("query", "path", "header", "body") else loc) or None
    return bad_request(f"{param}: {first.get('msg')}" if param else str(first.get("msg")), param=param,
                       code="invalid_value")
