"""The templates a send may name (API.md section 3), listed as one blueprint.

    GET /templates   every template: its name, parts and the variables it uses, and whether
                     it is shipped or the deployment's own (TEMPLATES_DIR)

It takes any valid credential, as a send does (401 otherwise): a deployment's templates are
its own business. It is not rate limited; failed authentications count as on every route.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from mailservice.api.request_path import authenticate, service


def template_blueprint() -> Blueprint:
    """The template routes."""
    templates = Blueprint("templates", __name__)

    @templates.get("/templates")
    def list_templates() -> Response:
        authenticate({})  # a GET has no body: the credential comes in a header
        return jsonify(
            templates=[
                {
                    "name": info.name,
                    "parts": list(info.parts),
                    "variables": list(info.variables),
                    "source": info.source,
                }
                for info in service().templates.describe()
            ]
        )

    return templates
