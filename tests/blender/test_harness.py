"""The harness itself: the source add-on enables in every Blender version and disables cleanly."""

import pytest

pytestmark = pytest.mark.blender


def test_addon_enables_and_disables(blender):
    result = blender.run(
        """
        import addon_utils
        loaded, enabled = addon_utils.check(ADDON.__name__)
        version = bpy.app.version
        addon_utils.disable(ADDON.__name__, default_set=True, handle_error=None)
        emit(enabled=enabled, version=list(version), after=addon_utils.check(ADDON.__name__)[1])
        """
    )
    assert result["enabled"] and not result["after"]
    assert result["version"][0] == (4 if blender.label == "bpy42" else 5)
