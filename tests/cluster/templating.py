"""The parts of Argo's template language that Metaflow's WorkflowTemplates use, as pure functions.

Read from Argo Workflows' controller and util/template (not copied):
- ``{{name}}`` tags (spaces allowed inside the braces) are replaced by the value of ``name`` in
  the scope of the node being run: ``workflow.*`` (name, namespace, uid, creationTimestamp,
  parameters.*, labels.*, annotations.*, status and failures in exit handlers), ``inputs.*``,
  ``pod.name``, ``tasks.<t>.outputs.parameters.*`` in a DAG, ``steps.<s>...`` in steps. A tag
  that names nothing in scope is an error, as in Argo; ``{{=expr}}`` expressions are not
  supported here (none of our flows' templates uses one) and are reported as such.
- A DAG task's ``depends`` is a boolean expression over ``task.Phase`` terms (a bare ``task``
  means Succeeded, Skipped or Daemoned), ``&&``, ``||``, ``!`` and parentheses.
- A step's ``when`` is a govaluate comparison after substitution; only ``a == b`` and ``a != b``
  (and ``true``/``false``) are supported.
- Kubernetes expands ``$(VAR)`` in env values, command and args with the variables defined
  before it (``$$(VAR)`` escapes); undefined references stay as written.
"""

from __future__ import annotations

import re

TAG = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
K8S_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class TemplateError(ValueError):
    """A template the simulated controller cannot run (Argo would fail the node with it)."""


def substitute(text: str, scope: dict[str, str]) -> str:
    """Replace every ``{{tag}}`` in ``text`` with its value in ``scope``."""

    def replace(match: re.Match) -> str:
        key = match[1]
        if key.startswith("="):
            raise TemplateError(f"expression tags are not supported here: {{{{{key}}}}}")
        if key not in scope:
            raise TemplateError(f"failed to resolve {{{{{key}}}}}")
        return str(scope[key])

    return TAG.sub(replace, text)


def substitute_all(document, scope: dict[str, str]):
    """``substitute`` in every string of a JSON-like document (a new copy)."""
    if isinstance(document, str):
        return substitute(document, scope)
    if isinstance(document, list):
        return [substitute_all(item, scope) for item in document]
    if isinstance(document, dict):
        return {key: substitute_all(value, scope) for key, value in document.items()}
    return document


def expand_k8s(text: str, defined: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of env values, command and args."""

    def replace(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        return defined.get(match[1], match[0])

    return K8S_VAR.sub(replace, text)


SUCCESS_LIKE = ("Succeeded", "Skipped", "Daemoned")
DEPENDS_TERM = re.compile(r"([A-Za-z0-9_-]+)(?:\.(\w+))?")


def depends_on(expression: str) -> set[str]:
    """The task names a ``depends`` expression refers to."""
    tokens = re.sub(r"&&|\|\||[!()]", " ", expression or "").split()
    return {DEPENDS_TERM.fullmatch(token)[1] for token in tokens}


def depends_satisfied(expression: str, phases: dict[str, str]) -> bool:
    """Evaluate ``depends`` once every task it names has finished (phases: task -> phase)."""
    if not (expression or "").strip():
        return True
    python = []
    for token in re.findall(r"&&|\|\||!|\(|\)|[A-Za-z0-9_.-]+", expression):
        if token == "&&":
            python.append(" and ")
        elif token == "||":
            python.append(" or ")
        elif token == "!":
            python.append(" not ")
        elif token in "()":
            python.append(token)
        else:
            match = DEPENDS_TERM.fullmatch(token)
            if not match:
                raise TemplateError(f"bad depends term {token!r}")
            task, result = match[1], match[2]
            phase = phases.get(task)
            if result is None:
                value = phase in SUCCESS_LIKE
            elif result == "Failed":
                value = phase == "Failed"
            elif result == "Errored":
                value = phase == "Error"
            elif result == "AnySucceeded" or result == "AllFailed":
                raise TemplateError(f"{result} needs a fan-out task; not supported here")
            else:
                value = phase == result
            python.append(str(value))
    return bool(eval("".join(python), {"__builtins__": {}}))  # noqa: S307 - True/False/and/or


def when_holds(expression: str) -> bool:
    """A substituted ``when``: ``true``, ``false``, ``a == b`` or ``a != b``."""
    text = expression.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for operator in ("!=", "=="):
        if operator in text:
            left, right = (side.strip().strip("'\"") for side in text.split(operator, 1))
            return (left != right) if operator == "!=" else (left == right)
    raise TemplateError(f"unsupported when expression {expression!r}")


def field_path(fieldpath: str, pod: dict) -> str:
    """A downward-API fieldRef of a pod: ``metadata.name``, ``metadata.labels['k']``, ..."""
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", fieldpath)
    if match:
        return pod["metadata"].get(match[1], {}).get(match[2], "")
    simple = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": pod["metadata"]["namespace"],
        "metadata.uid": pod["metadata"]["uid"],
        "spec.nodeName": pod["spec"]["nodeName"],
        "spec.serviceAccountName": pod["spec"]["serviceAccountName"],
        "status.hostIP": pod["status"]["hostIP"],
        "status.podIP": pod["status"]["podIP"],
    }
    if fieldpath not in simple:
        raise TemplateError(f"unsupported fieldRef {fieldpath}")
    return simple[fieldpath]


def set_path(document: dict, path: str, value) -> None:
    """An Argo Events trigger ``dest`` (sjson): dotted keys and ``#(name=x)`` list queries."""
    parts = re.findall(r"#\([^)]*\)|[^.]+", path)
    target = document
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        query = re.fullmatch(r"#\((\w+)=([^)]*)\)", part)
        if query:
            key, wanted = query[1], query[2].strip("\"'")
            matches = [item for item in target if str(item.get(key)) == wanted]
            if not matches:
                raise TemplateError(f"no list item with {key}={wanted} for {path}")
            target = matches[0]
            continue
        if last:
            target[part] = value
        else:
            target = target.setdefault(part, {})


def lookup(document, dotted: str):
    """gjson-style ``a.b.c`` lookup; None when a part is missing."""
    for part in dotted.split("."):
        if not isinstance(document, dict) or part not in document:
            return None
        document = document[part]
    return document
