"""Config patterns: an anchored pattern that names a folder lists only that folder, and
finds exactly what a search of every config name finds."""

import os

import pytest
import regex

from app.configs import all_configs, match_configs

FOLDERS = ["configs/a", "configs/a/b", "configs/ab", "configs/A", "configs/.h", "configs/x y",
           "configs/a+", "configs/[x]"]
PATTERNS = [
    "^configs/a/", "^configs/a", "^configs/ab*/", "^configs/a/b/1", "^configs/a/|configs/ab",
    "^configs/(a|ab)/", "^configs/a/(1|2)", "^configs/a[/]b/", "^configs/ln/", "^configs/A/(?i)",
    "^configs/x y/", r"^configs/a\+/", "^configs/a+/", "^configs/.h/", "^configs/a/b?/",
    "^configs/[|]/", "^configs/a/[]|]", "configs/a/", "^configs/a/b/$", "^configs/a/b{0}/",
    r"^configs/\[x\]/", "^configs/a/b/1|^configs/ab/", "^configs/a/b(/)", "^configs/A/",
]


@pytest.fixture
def workspace(tmp_path):
    for folder in FOLDERS:
        os.makedirs(tmp_path / folder, exist_ok=True)
        for name in ("1.yaml", "2.yaml", "z-base.yaml", ".hidden.yaml", "notes.txt"):
            (tmp_path / folder / name).write_text("x: 1\n")
    # A linked folder: the walk of configs/ does not follow it, nor does a narrowed one.
    os.symlink(tmp_path / "configs" / "a", tmp_path / "configs" / "ln")
    return str(tmp_path)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_pattern_finds_what_a_search_of_every_name_finds(workspace, pattern):
    compiled = regex.compile(pattern, regex.VERSION0)
    expected = [p for p in all_configs(workspace) if compiled.search(p)]
    assert match_configs(workspace, pattern) == expected


def test_an_anchored_folder_pattern_lists_only_that_folder(workspace, monkeypatch):
    listed = []
    real = os.walk

    def walk(top, *args, **kwargs):
        listed.append(os.path.relpath(top, workspace))
        return real(top, *args, **kwargs)

    monkeypatch.setattr(os, "walk", walk)
    assert match_configs(workspace, "^configs/a/b/") == ["configs/a/b/1.yaml",
                                                         "configs/a/b/2.yaml"]
    assert listed == ["configs/a/b"]
    listed.clear()
    assert len(match_configs(workspace, "a/b/")) == 2  # not anchored: every folder is read
    assert listed == ["configs"]
