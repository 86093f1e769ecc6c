"""validate: the checks a set of documents must pass before anything is planned.

`validate(docs, store)` is the controller's validation step, in three parts:
1. every document against its kind's JSON Schema, and names unique per kind;
2. resolution (resolve.py: defaults, absolute paths, references), which reports missing
   references and initFrom cycles;
3. the cross-field rules JSON Schema cannot express (this module), on the resolved objects.
Every problem of a part is reported together; a later part runs only when the earlier ones pass.
"""
from __future__ import annotations

from aamctl.api.parse import Document
from aamctl.api.resolve import Obj, Resolved, Store, resolve
from aamctl.api.rules import dataset, hardware, model, run, sweep
from aamctl.api.schema import validate_document
from aamctl.errors import AamError, Diagnostic


def validate(docs: list[Document], store: Store | None = None) -> Resolved:
    """Documents -> resolved objects that pass every check; raises AamError listing all problems."""
    check_documents(docs)
    res = resolve(docs, store)
    diags = [d for obj in res.given for d in check_rules(res, obj)]
    if diags:
        raise AamError(diags)
    return res


def check_documents(docs: list[Document]) -> None:
    """Schema validity and unique names, for every document; raises AamError with all problems."""
    diags: list[Diagnostic] = []
    first: dict[tuple[str, str], Document] = {}
    for doc in docs:
        problems = validate_document(doc)
        if problems:
            diags.extend(problems)
            continue
        key = (doc.data["kind"], doc.data["metadata"]["name"])
        if key in first:
            f = first[key]
            diags.append(doc.diag(f"duplicate {key[0]} named '{key[1]}'", ("metadata", "name"),
                                  hint=f"first defined at {f.file}:{f.where(('metadata', 'name'))[0]}; "
                                       "names are unique per kind"))
            continue
        first[key] = doc
    if diags:
        raise AamError(diags)


def check_rules(res: Resolved, obj: Obj) -> list[Diagnostic]:
    """Cross-field rules that JSON Schema cannot express, by kind (api/rules/<kind>.py)."""
    if obj.kind == "Sweep":  # a Sweep's trials are judged by the whole validation
        return sweep.check(res, obj, validate)
    rules = {"Dataset": dataset.check, "Model": model.check, "HardwareProfile": hardware.check, "Run": run.check}
    return rules[obj.kind](res, obj)
