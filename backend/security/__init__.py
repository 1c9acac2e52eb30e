"""Browser-facing protections: CSRF, security headers and Secure cookies, API docs without a CDN."""
