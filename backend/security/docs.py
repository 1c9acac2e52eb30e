"""/docs (Swagger UI) and /redoc from vendored files (frontend/static/vendor): no CDN, and no inline script, so the
pages pass the studio's Content-Security-Policy. Each page's small init script reads the schema URL from a data
attribute."""

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from backend.security.headers import CONTENT_SECURITY_POLICY

router = APIRouter(include_in_schema=False)

OPENAPI_URL = "/openapi.json"
# ReDoc runs its search index in a Web Worker it makes from a blob: URL; only this page may. (Its footer's logo
# comes from cdn.redoc.ly: img-src blocks it, and ReDoc drops the image when it fails to load.)
REDOC_POLICY = f"{CONTENT_SECURITY_POLICY}; worker-src 'self' blob:"
SWAGGER = "/static/vendor/swagger-ui"
REDOC = "/static/vendor/redoc"

SWAGGER_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Fine-Tuning Studio - API docs</title>
<link rel="stylesheet" href="{SWAGGER}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{OPENAPI_URL}"></div>
<script src="{SWAGGER}/swagger-ui-bundle.js"></script>
<script src="{SWAGGER}/init.js"></script>
</body>
</html>
"""

REDOC_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Fine-Tuning Studio - API reference</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
</head>
<body>
<div id="redoc" data-openapi-url="{OPENAPI_URL}"></div>
<script src="{REDOC}/redoc.standalone.js"></script>
<script src="{REDOC}/init.js"></script>
</body>
</html>
"""


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui() -> HTMLResponse:
    return HTMLResponse(SWAGGER_PAGE)


@router.get("/redoc", response_class=HTMLResponse)
def redoc() -> HTMLResponse:
    return HTMLResponse(REDOC_PAGE, headers={"Content-Security-Policy": REDOC_POLICY})
