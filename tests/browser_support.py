"""Opening the ComfyUI page in headless Chromium (Debian's chromium, driven by Playwright): what
the browser tests share (the context itself is ``tests/browser/conftest.py``'s ``chromium``)."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
APP_READY_JS = ("() => window.app && window.app.graph && window.LiteGraph && "
                "Object.keys(window.LiteGraph.registered_node_types).length > 100")


def open_page(context, url: str, routes: dict | None = None):
    """A new tab on the ComfyUI at ``url``, once its app has registered the node types; page
    errors collect in ``tab.page_errors``. ``routes``: ``{url pattern: handler}`` of the tab's
    own, set before it loads."""
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    tab.page_errors = []
    tab.on("pageerror", lambda err: tab.page_errors.append(str(err)[:300]))
    for pattern, handler in (routes or {}).items():
        tab.route(pattern, handler)
    tab.goto(url + "/", wait_until="domcontentloaded")
    tab.wait_for_function(APP_READY_JS)
    return tab


def open_pack_templates(tab) -> None:
    """ComfyUI's template browser on ``tab``, at the pack's section (under Extensions), once its
    thumbnails are listed."""
    tab.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    tab.get_by_text("pyramid-flow", exact=True).first.click()
    tab.wait_for_function("() => document.querySelectorAll('[role=dialog] img[alt^=pyramid_flow_]').length > 0")
