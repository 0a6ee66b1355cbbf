"""The repository ships the license its package metadata declares."""

import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# md5 of the Apache License 2.0 text as apache.org distributes it (LICENSE-2.0.txt), unmodified.
APACHE_2_MD5 = "86d3f3a95c324c9479bd8986968f4327"


def test_license_file_is_the_full_apache_2_text_that_pyproject_declares():
    text = (REPO / "LICENSE").read_bytes()
    assert hashlib.md5(text).hexdigest() == APACHE_2_MD5
    assert b"Apache License\n                           Version 2.0, January 2004" in text
    assert b"END OF TERMS AND CONDITIONS" in text
    assert 'license = { text = "Apache-2.0" }' in (REPO / "pyproject.toml").read_text()  # no tomllib on 3.10
