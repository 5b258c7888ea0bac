"""Project templates rendered with copier (built-in ones ship as package data)."""

from forgeline.adapters.templates.copier_provider import (
    CopierTemplateProvider,
    builtin_templates_dir,
)

__all__ = ["CopierTemplateProvider", "builtin_templates_dir"]
