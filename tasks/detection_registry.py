"""The one place the suite meets mmdet's registries.

:func:`mmdet_scope` registers mmdet's own modules and makes ``mmdet`` the default
registry scope: every builder of the detector, its data and its metric calls it first.
The suite's own mmdet modules register themselves when their module is imported, and
the builders import them: :mod:`tasks.vitdet` (``ViTDetBackbone``,
``SimpleFeaturePyramid``, ``PartLN2d``), :mod:`tasks.detection_guards`
(``FiniteDeltaXYWHBBoxCoder``, ``ValidBoxRoIHead``) and :mod:`tasks.data.coco_pipeline`
(``CheckedLoadImageFromFile``, ``PadKeepImageShape``).
"""
from __future__ import annotations

__all__ = ["mmdet_scope"]


def mmdet_scope() -> None:
    """Register mmdet's modules and make ``mmdet`` the default scope (idempotent).

    mmdet's own ``register_all_modules(init_default_scope=True)`` warns each time a Runner
    has made ``mmengine`` the current scope since mmdet's last one; a new ``mmdet``
    scope is what it then makes, and what this makes without the warning."""
    import datetime

    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    current = DefaultScope.get_current_instance()
    if current is None or current.scope_name != "mmdet":
        name = "mmdet" if not DefaultScope.check_instance_created("mmdet") else \
            f"mmdet-{datetime.datetime.now().isoformat()}"
        DefaultScope.get_instance(name, scope_name="mmdet")
