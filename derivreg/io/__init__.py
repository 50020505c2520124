"""Readers for external log formats.

``read_sysid(path)`` reads WPILib SysId logs (legacy JSON) into a tidy DataFrame for
:func:`derivreg.characterize`.
"""

from __future__ import annotations

from derivreg.io.sysid import SysIdLogError, read_sysid

__all__ = ["SysIdLogError", "read_sysid"]
