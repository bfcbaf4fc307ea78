"""Django and Flask are never needed to import the package or its integrations."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CODE = textwrap.dedent(
    """
    import sys
    for name in ("django", "flask", "werkzeug"):
        sys.modules[name] = None  # importing any of them now raises ImportError
    import moengage_personalize
    import moengage_personalize.aio
    import moengage_personalize.contrib
    import moengage_personalize.contrib.wsgi
    import moengage_personalize.contrib.django as contrib_django
    ctx = moengage_personalize.contrib.wsgi.context_from_environ({"REMOTE_ADDR": "10.0.0.1"})
    assert ctx.user.ip_address == "10.0.0.1"
    try:
        contrib_django.get_client()
    except ImportError:
        print("django needed only when used")
    """
)


def test_the_package_imports_without_django_or_flask() -> None:
    """With Django, Flask and werkzeug unimportable, every module imports and the WSGI helper
    works; the Django helpers need Django only when called."""
    done = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "django needed only when used"
