"""GET /versions: the model versions Label Studio can offer a project (its project settings list them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from ..dependencies import RedisDep, require_basic_auth
from ..predict_service import project_id
from ..schemas import PROJECT_PATTERN
from ..version_log import list_versions

router = APIRouter(dependencies=[Depends(require_basic_auth)])


@router.get("/versions")
def versions(connection: RedisDep, project: Annotated[str | None, Query(pattern=PROJECT_PATTERN)] = None) -> dict:
    """Label Studio 1.23.2 sends no project (a GET without a body), so every project's versions come back, newest
    first; `?project=N` narrows them. `versions` is what Label Studio reads; `details` says when each was made and
    how many prompts it used."""
    details = list_versions(connection, project_id(project) if project else None)
    return {"versions": [d["version"] for d in details], "details": details}
