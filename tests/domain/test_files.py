"""Keys of task files, safe display names and Content-Disposition headers."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest

from common_operations.domain.files import (
    MAX_FILE_NAME_LENGTH,
    InvalidKey,
    content_disposition,
    input_key,
    output_key,
    result_key,
    sanitize_file_name,
    task_prefix,
    validate_key,
)

TASK = "0b6f3f0e-7a51-4c36-9a43-0c8c6f0d7a11"


def test_keys_have_the_documented_shapes() -> None:
    assert re.fullmatch(rf"{TASK}/input/[0-9a-f]{{32}}", input_key(TASK))
    assert re.fullmatch(rf"{TASK}/output/[0-9a-f]{{32}}\.csv", output_key(TASK, "csv"))
    assert re.fullmatch(rf"{TASK}/results/[0-9a-f]{{32}}\.xlsx", result_key(TASK, ".XLSX"))
    assert task_prefix(TASK) == f"{TASK}/"
    assert input_key(TASK) != input_key(TASK)
    for key in (input_key(TASK), output_key(TASK, "csv"), result_key(TASK, "json")):
        assert validate_key(key) == key
        assert key.startswith(task_prefix(TASK))


@pytest.mark.parametrize("task_id", ["", "..", "a/b", "a b", "../x", "x\x00"])
def test_keys_refuse_a_task_id_that_is_not_one_segment(task_id: str) -> None:
    with pytest.raises(InvalidKey):
        input_key(task_id)


@pytest.mark.parametrize("ext", ["", "c/v", "..", "a" * 17, "tar.gz", "csv\n"])
def test_keys_refuse_strange_extensions(ext: str) -> None:
    with pytest.raises(InvalidKey):
        output_key(TASK, ext)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../secret",
        "a/../../b",
        "a/./b",
        "a//b",
        "a/",
        "a\\b",
        "a/b c",
        "a/%2e%2e/b",
        "a/\x00",
        "ä/b",
        "a" * 1025,
    ],
)
def test_validate_key_refuses_traversal_and_odd_characters(key: str) -> None:
    with pytest.raises(InvalidKey) as info:
        validate_key(key)
    assert info.value.code == "INVALID_KEY"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.csv", "report.csv"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\data.xlsx", "data.xlsx"),
        ("dir/sub\\name.txt", "name.txt"),
        ("a\x00b\x1fc\x7f.csv", "abc.csv"),
        ('say "hi".csv', "say hi.csv"),
        ("evil\u202egpj.exe", "evilgpj.exe"),
        ("  .hidden. ", "hidden"),
        ("Ünïcödé – 報告.csv", "Ünïcödé – 報告.csv"),
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("LPT9.csv", "_LPT9.csv"),
        ("COM1", "_COM1"),
        ("CONSOLE.txt", "CONSOLE.txt"),
        ("", "file"),
        ("..", "file"),
        ("/", "file"),
        ("\r\n", "file"),
    ],
)
def test_sanitize_file_name(raw: str, expected: str) -> None:
    assert sanitize_file_name(raw) == expected


def test_sanitize_file_name_cuts_long_names_keeping_the_extension() -> None:
    name = sanitize_file_name("x" * 500 + ".csv")
    assert len(name) == MAX_FILE_NAME_LENGTH
    assert name.endswith(".csv")
    assert len(sanitize_file_name("y" * 500)) == MAX_FILE_NAME_LENGTH


def _parts(header: str) -> tuple[str, str, str]:
    match = re.fullmatch(r"(attachment|inline); filename=\"([^\"]*)\"; filename\*=UTF-8''(\S+)", header)
    assert match, header
    return match.group(1), match.group(2), match.group(3)


def test_content_disposition_has_an_ascii_fallback_and_the_exact_utf8_name() -> None:
    kind, fallback, encoded = _parts(content_disposition("Résumé 報告.csv"))
    assert kind == "attachment"
    assert fallback == "Resume __.csv"
    assert unquote(encoded, encoding="utf-8") == "Résumé 報告.csv"
    assert all(ch.isascii() for ch in content_disposition("日本語.xlsx"))


@pytest.mark.parametrize(
    "name",
    [
        'a"; filename="evil.exe',
        "a\r\nSet-Cookie: x=1",
        "a\nb\rc.csv",
        'x\\"y',
        "name'; filename*=UTF-8''evil.exe",
    ],
)
def test_content_disposition_cannot_be_injected(name: str) -> None:
    header = content_disposition(name)
    assert "\r" not in header and "\n" not in header
    # Exactly the two quotes of the fallback, and one filename* parameter.
    assert header.count('"') == 2
    assert header.count("filename*=") == 1
    _kind, fallback, encoded = _parts(header)
    assert all(ch not in encoded for ch in " ;\"'")
    assert "\\" not in fallback


def test_content_disposition_inline_and_unknown_kinds() -> None:
    assert content_disposition("a.pdf", disposition="inline").startswith("inline; ")
    with pytest.raises(ValueError):
        content_disposition("a.pdf", disposition="form-data")
