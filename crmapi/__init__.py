"""crmapi: a small, fast CRM REST API as a plain WSGI application."""

__version__ = '0.1.0'


def create_app(settings=None, db=None):
    """The WSGI callable (gunicorn: `crmapi:create_app()`); see crmapi.app.create_app."""
    from .app import create_app as build

    return build(settings, db)


__all__ = ['create_app', '__version__']
