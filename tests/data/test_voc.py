"""Tests for the Pascal VOC reader on small real VOC trees (JPEGs, VOC-style XML, ImageSets lists) written in
tmp_path: multi-hot targets with `difficult` as ignore, the accepted roots, bad and hostile annotations, the
download path with local tarballs (md5 checked, unsafe members refused), and one short CLI training run. No network."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from visionbench import layout
from visionbench.cli.main import main
from visionbench.data import sources
from visionbench.data import voc as voc_module
from visionbench.data.voc import VOC2007, VOC_CLASSES, VocArchive, parse_annotation, voc2007, voc2012
from visionbench.errors import UserError
from visionbench.registry import DATASETS

C = {name: i for i, name in enumerate(VOC_CLASSES)}
REAL_DOWNLOAD = sources.download  # taken before conftest's guard replaces it

# image id -> objects as (class, difficult); difficult None leaves the <difficult> element out (as some 2012 files do)
OBJECTS: dict[str, list[tuple[str, int | None]]] = {
    "000001": [("dog", 0), ("person", 0)],
    "000002": [("cat", 1)],  # only difficult: ignore (-1)
    "000003": [("car", 1), ("car", 0), ("bus", 0)],  # car both difficult and not: present
    "000004": [("horse", 0), ("person", 1), ("person", 1)],
    "000005": [("bird", None), ("tvmonitor", 1), ("bird", 0)],
    "000006": [("aeroplane", 0)],
}
SPLITS = {"train": ["000001", "000002", "000003"], "val": ["000004"], "test": ["000005", "000006"]}
SPLITS["trainval"] = SPLITS["train"] + SPLITS["val"]


def expected_row(image_id: str, include_difficult: bool = False, objects: dict | None = None) -> list[float]:
    row = [0.0] * len(VOC_CLASSES)
    objs = (objects or OBJECTS)[image_id]
    for name, difficult in objs:
        if difficult == 1 and row[C[name]] != 1.0:
            row[C[name]] = 1.0 if include_difficult else -1.0
    for name, difficult in objs:
        if difficult != 1:
            row[C[name]] = 1.0
    return row


def annotation_xml(image_id: str, objects: list[tuple[str, int | None]], folder: str = "VOC2007") -> str:
    """A VOC-style annotation, laid out as the official files are (a person may carry <part>s with their own names)."""
    parts = []
    for name, difficult in objects:
        flag = "" if difficult is None else f"\n\t\t<difficult>{difficult}</difficult>"
        body_part = (
            "\n\t\t<part>\n\t\t\t<name>head</name>\n\t\t\t<bndbox><xmin>5</xmin><ymin>3</ymin><xmax>12</xmax>"
            "<ymax>10</ymax></bndbox>\n\t\t</part>"
            if name == "person"
            else ""
        )
        parts.append(
            f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>{flag}"
            f"\n\t\t<bndbox>\n\t\t\t<xmin>2</xmin>\n\t\t\t<ymin>3</ymin>\n\t\t\t<xmax>38</xmax>\n\t\t\t<ymax>27</ymax>"
            f"\n\t\t</bndbox>{body_part}\n\t</object>\n"
        )
    return (
        f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{image_id}.jpg</filename>\n"
        "\t<source>\n\t\t<database>The VOC2007 Database</database>\n\t</source>\n"
        "\t<size>\n\t\t<width>40</width>\n\t\t<height>30</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        f"\t<segmented>0</segmented>\n{''.join(parts)}</annotation>\n"
    )


def make_voc(
    base: Path,
    folder: str = "VOC2007",
    objects: dict[str, list[tuple[str, int | None]]] | None = None,
    splits: dict[str, list[str]] | None = None,
    seed: int = 0,
) -> Path:
    """Write `base/VOCdevkit/<folder>/` with JPEGImages (40x30 random RGB JPEGs), Annotations and ImageSets/Main."""
    objects = OBJECTS if objects is None else objects
    splits = SPLITS if splits is None else splits
    voc = base / "VOCdevkit" / folder
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for image_id, objs in objects.items():
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        (voc / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, objs, folder))
    for name, ids in splits.items():
        (voc / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc


def rows(split_ids: list[str], include_difficult: bool = False) -> torch.Tensor:
    return torch.tensor([expected_row(i, include_difficult) for i in split_ids], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# Targets


def test_targets_are_multi_hot_with_difficult_only_classes_ignored(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "data")
    raw = voc2007(root=str(tmp_path / "data"), download=False)
    assert raw.train.targets.dtype == torch.float32 and raw.train.targets.shape == (4, 20)
    torch.testing.assert_close(raw.train.targets, rows(SPLITS["trainval"]), rtol=0, atol=0)
    torch.testing.assert_close(raw.test.targets, rows(SPLITS["test"]), rtol=0, atol=0)
    # spelled out for the cases that matter
    dog_person, cat_difficult, car_both = raw.train.targets[:3]
    assert dog_person[C["dog"]] == 1 and dog_person[C["person"]] == 1 and dog_person.sum() == 2
    assert cat_difficult[C["cat"]] == -1 and cat_difficult.abs().sum() == 1, "difficult-only class is ignored"
    assert car_both[C["car"]] == 1 and car_both[C["bus"]] == 1 and car_both.sum() == 2, "difficult + normal -> 1"
    assert raw.train.targets[3, C["person"]] == -1 and raw.train.targets[3, C["horse"]] == 1
    assert raw.test.targets[0, C["bird"]] == 1, "an object without <difficult> counts as not difficult"
    assert raw.test.targets[0, C["tvmonitor"]] == -1
    assert raw.train.paths == [str(voc / "JPEGImages" / f"{i}.jpg") for i in SPLITS["trainval"]]
    assert all(Path(p).is_file() for p in raw.train.paths + raw.test.paths)
    info = raw.info
    assert (info.name, info.task, info.num_outputs, info.class_names) == ("voc2007", "multilabel", 20, VOC_CLASSES)


def test_include_difficult_counts_difficult_only_classes_as_present(tmp_path: Path) -> None:
    make_voc(tmp_path)
    raw = voc2007(root=str(tmp_path), download=False, include_difficult=True)
    torch.testing.assert_close(raw.train.targets, rows(SPLITS["trainval"], include_difficult=True), rtol=0, atol=0)
    torch.testing.assert_close(raw.test.targets, rows(SPLITS["test"], include_difficult=True), rtol=0, atol=0)
    assert raw.train.targets[1, C["cat"]] == 1 and (raw.train.targets >= 0).all(), "no -1 left"


@pytest.mark.parametrize("where", ["parent", "VOCdevkit", "VOC2007", "env", "env/voc2007"])
def test_root_may_be_the_devkit_parent_the_devkit_or_the_year_folder(tmp_path: Path, where: str, monkeypatch) -> None:
    if where.startswith("env"):
        make_voc(tmp_path / "shared" / where.removeprefix("env").strip("/"))
        monkeypatch.setenv("VISIONBENCH_DATA", str(tmp_path / "shared"))
        root = None
    else:
        voc = make_voc(tmp_path / "parent")
        root = str({"parent": tmp_path / "parent", "VOCdevkit": voc.parent, "VOC2007": voc}[where])
    raw = voc2007(root=root, download=False)
    assert len(raw.train) == 4 and len(raw.test) == 2
    torch.testing.assert_close(raw.test.targets, rows(SPLITS["test"]), rtol=0, atol=0)


def test_train_and_test_sets_are_chosen_by_name(tmp_path: Path) -> None:
    make_voc(tmp_path)
    raw = DATASETS.get("voc2007")(root=str(tmp_path), download=False, train_set="train", test_set="val")
    assert [Path(p).stem for p in raw.train.paths] == SPLITS["train"]
    assert [Path(p).stem for p in raw.test.paths] == SPLITS["val"]


def test_voc2012_trains_on_train_tests_on_val_and_refuses_the_withheld_test_set(tmp_path: Path) -> None:
    splits = {k: v for k, v in SPLITS.items() if k != "test"}
    make_voc(tmp_path, folder="VOC2012", splits=splits)
    raw = voc2012(root=str(tmp_path), download=False)
    assert [Path(p).stem for p in raw.test.paths] == SPLITS["val"]
    assert [Path(p).stem for p in raw.train.paths] == SPLITS["train"], "trainval holds val, the test set"
    assert raw.info.name == "voc2012"
    with pytest.raises(UserError, match="test_set='test': the VOC2012 test annotations are not public; use 'val'"):
        voc2012(root=str(tmp_path), download=False, test_set="test")
    with pytest.raises(UserError, match="not found"):  # a 2012 tree is not a 2007 one
        voc2007(root=str(tmp_path), download=False)


@pytest.mark.parametrize(
    ("year", "train_set", "test_set"), [(voc2012, "trainval", "val"), (voc2007, "trainval", "val")]
)
def test_no_image_is_in_both_the_train_and_the_test_list(tmp_path: Path, year, train_set: str, test_set: str) -> None:
    make_voc(tmp_path, folder="VOC2012" if year is voc2012 else "VOC2007")
    with pytest.raises(UserError) as info:
        year(root=str(tmp_path), download=False, train_set=train_set, test_set=test_set)
    message = str(info.value)
    assert f"1 images of test_set='{test_set}' are also in train_set='{train_set}' (e.g. 000004)" in message, message


def test_an_image_listed_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000005\n000006\n000005\n")
    with pytest.raises(UserError) as info:
        voc2007(root=str(tmp_path), download=False)
    assert str(info.value) == (
        f"{voc / 'ImageSets' / 'Main' / 'test.txt'}, line 3: image '000005' is listed again (first on line 1); "
        "expected each image once"
    )


def test_ignored_fields_and_blank_lines_in_lists(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    # the per-class lists of the devkit have a second column; only the first field of a line counts
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n000005 -1\n\n000006  1\n")
    raw = voc2007(root=str(tmp_path), download=False)
    assert [Path(p).stem for p in raw.test.paths] == ["000005", "000006"]


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objects=st.lists(st.tuples(st.sampled_from(VOC_CLASSES), st.sampled_from([0, 1, None])), max_size=8))
def test_parse_annotation_splits_present_and_difficult_only(tmp_path: Path, objects: list) -> None:
    path = tmp_path / "x.xml"
    path.write_text(annotation_xml("x", objects))
    positive, difficult = parse_annotation(path)
    assert positive == {C[n] for n, d in objects if d != 1}
    assert difficult == {C[n] for n, d in objects if d == 1} - positive


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, f"a UserError is one line: {message!r}"
    return message


_DTD_INTERNAL = (
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY a "dog">]>\n'
    "<annotation><object><name>&a;</name><difficult>0</difficult></object></annotation>\n"
)
_BILLION_LAUGHS = (  # 10**9 "lol"s once expanded
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY lol0 "lol">'
    + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    + "]>\n<annotation><object><name>&lol9;</name></object></annotation>\n"
)


def _objects(*objects: str) -> str:
    return f"<annotation>{''.join(f'<object>{o}</object>' for o in objects)}</annotation>"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("<annotation><object><name>dog</name></object>", "not well-formed XML", id="truncated"),
        pytest.param("", "not well-formed XML", id="empty"),
        pytest.param(_objects("<name>unicorn</name>"), "<object> 1 has unknown class 'unicorn'", id="unknown-class"),
        pytest.param(_objects("<name>dog</name>", "<name>Dog</name>"), "<object> 2 has unknown class 'Dog'", id="case"),
        pytest.param(_objects("<difficult>0</difficult>"), "<object> 1 has no <name>", id="no-name"),
        pytest.param(
            _objects("<name>dog</name><difficult>yes</difficult>"),
            "<difficult>yes</difficult>, expected 0 or 1",
            id="flag",
        ),
        pytest.param("<svg><object><name>dog</name></object></svg>", "root element is <svg>, expected", id="not-voc"),
        pytest.param(_DTD_INTERNAL, "refused an XML document type declaration (DTD)", id="dtd"),
        pytest.param(_BILLION_LAUGHS, "refused an XML document type declaration (DTD)", id="billion-laughs"),
        pytest.param(_objects("<name>&xxe;</name>"), "undefined entity", id="undeclared-entity"),
    ],
)
def test_bad_annotation_is_a_user_error_naming_the_file(tmp_path: Path, content: str, expected: str) -> None:
    voc = make_voc(tmp_path)
    xml = voc / "Annotations" / "000003.xml"
    xml.write_text(content)
    with pytest.raises(UserError) as info:
        voc2007(root=str(tmp_path), download=False)
    message = _one_line(info)
    assert message.startswith(f"{xml}: ") and expected in message, message


def test_external_entity_is_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("dog")  # a valid class: were the entity resolved, the parse would succeed
    voc = make_voc(tmp_path / "data")
    xml = voc / "Annotations" / "000001.xml"
    xml.write_text(
        f'<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
        "<annotation><object><name>&xxe;</name></object></annotation>\n"
    )
    with pytest.raises(UserError, match="refused an XML document type declaration") as info:
        voc2007(root=str(tmp_path / "data"), download=False)
    assert str(info.value).startswith(f"{xml}: ")


def test_missing_annotation_names_the_file(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    (voc / "Annotations" / "000004.xml").unlink()
    with pytest.raises(UserError, match="cannot read annotation") as info:
        voc2007(root=str(tmp_path), download=False)
    assert _one_line(info).startswith(f"{voc / 'Annotations' / '000004.xml'}: ")


def test_listed_image_without_jpeg_names_the_list_and_line(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    (voc / "JPEGImages" / "000006.jpg").unlink()
    with pytest.raises(UserError) as info:
        voc2007(root=str(tmp_path), download=False)
    message = _one_line(info)
    test_list = voc / "ImageSets" / "Main" / "test.txt"
    assert message.startswith(f"{test_list}, line 2: image '000006' is listed"), message
    assert "JPEGImages/000006.jpg does not exist" in message


@pytest.mark.parametrize(("line", "bad"), [("../../etc/passwd", "'../../etc/passwd'"), (".hidden", "'.hidden'")])
def test_list_entry_that_is_not_an_image_id_names_the_line(tmp_path: Path, line: str, bad: str) -> None:
    voc = make_voc(tmp_path)
    test_list = voc / "ImageSets" / "Main" / "test.txt"
    test_list.write_text(f"000005\n\n{line}\n")
    with pytest.raises(UserError) as info:
        voc2007(root=str(tmp_path), download=False)
    assert _one_line(info) == f"{test_list}, line 3: {bad} is not an image id; expected a file stem"


def test_empty_list_is_a_user_error(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n\n")
    with pytest.raises(UserError, match="lists no images") as info:
        voc2007(root=str(tmp_path), download=False)
    assert _one_line(info).startswith(str(voc / "ImageSets" / "Main" / "trainval.txt"))


def test_missing_list_without_download_names_the_list_and_the_folders(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    (voc / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(UserError) as info:
        voc2007(root=str(tmp_path), download=False)
    message = _one_line(info)
    assert message.startswith(f"voc2007: {voc / 'ImageSets' / 'Main' / 'test.txt'} not found"), message
    assert "VOCtest_06-Nov-2007.tar" in message and "(downloading is off (download=False))" in message
    assert str(tmp_path) in message and str(tmp_path / "xdg-cache" / "visionbench") in message


def test_nothing_found_without_download(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        voc2007(root=str(tmp_path / "nowhere"), download=False)
    message = _one_line(info)
    assert "ImageSets/Main/trainval.txt not found" in message and str(tmp_path / "nowhere") in message


@pytest.mark.parametrize("image_set", ["../test", "", "a/b"])
def test_bad_image_set_name(tmp_path: Path, image_set: str) -> None:
    with pytest.raises(UserError, match="is not an ImageSets/Main list name"):
        voc2007(root=str(tmp_path), download=False, train_set=image_set)


# ---------------------------------------------------------------------------------------------------------------
# Download


def make_tar(path: Path, tree: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> Path:
    """A tarball holding `tree/VOCdevkit` as the official ones do, plus `extra` members."""
    with tarfile.open(path, "w") as tar:
        tar.add(tree / "VOCdevkit", arcname="VOCdevkit")
        for info, content in extra:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """A local 'server' folder: VOC2007 points at it by file:// URL and `download` is the real one (md5 checked)."""
    folder = tmp_path / "server"
    folder.mkdir()
    fetched: list[str] = []

    def local_download(url: str, dest: Path, md5: str | None = None, timeout: float = 30.0) -> Path:
        assert url.startswith(folder.as_uri()), url
        fetched.append(url.rsplit("/", 1)[1])
        return REAL_DOWNLOAD(url, dest, md5=md5, timeout=timeout)

    monkeypatch.setattr(sources, "download", local_download)
    return folder, fetched


def _serve(monkeypatch: pytest.MonkeyPatch, folder: Path, archives: dict[str, tuple[Path, tuple[str, ...]]]) -> None:
    specs = tuple(VocArchive(name, _md5(path), sets) for name, (path, sets) in archives.items())
    monkeypatch.setattr(
        voc_module, "VOC2007", dataclasses.replace(VOC2007, base_url=folder.as_uri() + "/", archives=specs)
    )


def test_download_fetches_verifies_unpacks_and_merges_into_the_cache(tmp_path: Path, server, monkeypatch) -> None:
    folder, fetched = server
    trainval = {k: v for k, v in SPLITS.items() if k != "test"}
    make_voc(tmp_path / "tv", objects={i: OBJECTS[i] for i in SPLITS["trainval"]}, splits=trainval)
    make_voc(tmp_path / "te", objects={i: OBJECTS[i] for i in SPLITS["test"]}, splits={"test": SPLITS["test"]})
    tv, te = (make_tar(folder / f"{n}.tar", tmp_path / n) for n in ("tv", "te"))
    _serve(monkeypatch, folder, {"tv.tar": (tv, ("train", "val", "trainval")), "te.tar": (te, ("test",))})

    raw = voc2007(root=str(tmp_path / "nowhere"), download=True)
    assert fetched == ["tv.tar", "te.tar"]
    torch.testing.assert_close(raw.train.targets, rows(SPLITS["trainval"]), rtol=0, atol=0)
    torch.testing.assert_close(raw.test.targets, rows(SPLITS["test"]), rtol=0, atol=0)
    cache = tmp_path / "xdg-cache" / "visionbench" / "voc2007"
    voc = cache / "VOCdevkit" / "VOC2007"
    assert sorted(p.name for p in cache.iterdir()) == ["VOCdevkit"], "archives and temp folders are removed"
    assert sorted(p.name for p in (voc / "ImageSets" / "Main").iterdir()) == [
        "test.txt",
        "train.txt",
        "trainval.txt",
        "val.txt",
    ]
    assert len(list((voc / "JPEGImages").iterdir())) == 6, "both archives merge into one VOC2007 folder"
    assert all(Path(p).parent == voc / "JPEGImages" for p in raw.train.paths + raw.test.paths)

    again = voc2007(root=None, download=False)  # the cached copy is found, nothing fetched
    assert fetched == ["tv.tar", "te.tar"] and torch.equal(again.test.targets, raw.test.targets)


def test_download_only_fetches_the_missing_archive(tmp_path: Path, server, monkeypatch) -> None:
    folder, fetched = server
    make_voc(tmp_path / "local", splits={k: v for k, v in SPLITS.items() if k != "test"})
    make_voc(tmp_path / "te", objects={i: OBJECTS[i] for i in SPLITS["test"]}, splits={"test": SPLITS["test"]})
    te = make_tar(folder / "te.tar", tmp_path / "te")
    _serve(monkeypatch, folder, {"tv.tar": (te, ("train", "val", "trainval")), "te.tar": (te, ("test",))})
    raw = voc2007(root=str(tmp_path / "local"), download=True)
    assert fetched == ["te.tar"]
    assert Path(raw.train.paths[0]).is_relative_to(tmp_path / "local")
    assert Path(raw.test.paths[0]).is_relative_to(tmp_path / "xdg-cache")


def test_download_with_a_wrong_md5_is_refused(tmp_path: Path, server, monkeypatch) -> None:
    folder, fetched = server
    make_voc(tmp_path / "tv")
    tv = make_tar(folder / "tv.tar", tmp_path / "tv")
    spec = dataclasses.replace(
        VOC2007, base_url=folder.as_uri() + "/", archives=(VocArchive("tv.tar", "0" * 32, ("trainval", "test")),)
    )
    monkeypatch.setattr(voc_module, "VOC2007", spec)
    with pytest.raises(UserError) as info:
        voc2007(root=str(tmp_path / "nowhere"), download=True)
    message = _one_line(info)
    assert (
        f"download of {folder.as_uri()}/tv.tar failed" in message and f"md5 {_md5(tv)}, expected {'0' * 32}" in message
    )
    assert not (tmp_path / "xdg-cache" / "visionbench" / "voc2007" / "VOCdevkit").exists()


def test_failed_download_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, dest: Path, md5: str | None = None, timeout: float = 30.0) -> Path:
        assert (url, md5, timeout) == (VOC2007.base_url + "VOCtrainval_06-Nov-2007.tar", VOC2007.archives[0].md5, 10.0)
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources, "download", offline)
    with pytest.raises(UserError) as info:
        voc2007(root=str(tmp_path / "nowhere"), download=True)
    message = _one_line(info)
    assert "ImageSets/Main/trainval.txt not found" in message and "network is unreachable" in message


def _file(name: str, content: bytes = b"evil") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("dotdot", "refused to extract member '../evil': path contains '..'"),
        ("nested-dotdot", "'VOCdevkit/VOC2007/../../../../../evil': path contains '..'"),
        ("absolute", "/outside/evil': absolute path"),
        ("symlink-out", "'VOCdevkit/VOC2007/JPEGImages/evil.jpg': is a link to "),
        ("symlink-dir", "'VOCdevkit/escape': is a link to "),
        ("hardlink", "'VOCdevkit/VOC2007/JPEGImages/evil.jpg': is a link to '/etc/passwd'"),
    ],
)
def test_hostile_archive_is_refused_and_writes_nothing_outside(
    tmp_path: Path, server, monkeypatch, attack: str, reason: str
) -> None:
    folder, _ = server
    outside = tmp_path / "outside"
    outside.mkdir()
    members = {
        "dotdot": [_file("../evil")],
        "nested-dotdot": [_file("VOCdevkit/VOC2007/../../../../../evil")],
        "absolute": [_file(str(outside / "evil"))],
        "symlink-out": [_link("VOCdevkit/VOC2007/JPEGImages/evil.jpg", str(outside / "evil"))],
        # the classic escape: a link to a folder outside, then a file written through it
        "symlink-dir": [_link("VOCdevkit/escape", str(outside)), _file("VOCdevkit/escape/evil")],
        "hardlink": [_link("VOCdevkit/VOC2007/JPEGImages/evil.jpg", "/etc/passwd", tarfile.LNKTYPE)],
    }[attack]
    make_voc(tmp_path / "tv")
    tv = make_tar(folder / "tv.tar", tmp_path / "tv", members)
    _serve(monkeypatch, folder, {"tv.tar": (tv, ("train", "val", "trainval", "test"))})
    with pytest.raises(UserError) as info:
        voc2007(root=str(tmp_path / "nowhere"), download=True)
    message = _one_line(info)
    assert "refused to extract member" in message and reason in message, message
    assert f"download of {folder.as_uri()}/tv.tar failed" in message
    assert list(outside.iterdir()) == [], "nothing written outside the cache"
    cache = tmp_path / "xdg-cache" / "visionbench" / "voc2007"
    assert not (tmp_path / "evil").exists() and not (cache.parent / "evil").exists() and not (cache / "evil").exists()
    assert not (cache / "VOCdevkit").exists(), "nothing of a refused archive is unpacked"
    assert [p.name for p in cache.iterdir()] == ["tv.tar"], "no temp folder is left behind"


# ---------------------------------------------------------------------------------------------------------------
# End to end


def test_train_voc_from_the_cli_writes_map_and_per_class_ap(tmp_path: Path, capsys) -> None:
    objects = {f"{i:06d}": [(VOC_CLASSES[i % 3], 0), (VOC_CLASSES[3 + i % 2], int(i % 5 == 0))] for i in range(1, 25)}
    objects["000024"] = [("person", 1)]
    ids = sorted(objects)
    make_voc(tmp_path / "data", objects=objects, splits={"trainval": ids[:16], "test": ids[16:]})
    config = tmp_path / "voc_tiny.yaml"
    config.write_text(
        f"data:\n  name: voc2007\n  root: {tmp_path / 'data'}\n  image_size: 32\n  num_workers: 0\n"
        "  val_fraction: 0.25\n  download: false\n"
        "model:\n  name: small_cnn\n"
        f"trainer:\n  epochs: 1\n  batch_size: 4\n  eval_batch_size: 8\n  device: cpu\n  out_dir: {tmp_path / 'runs'}\n"
        "  checkpoint_every_minutes: null\n  progress: lines\n"
    )
    code = main(["train", str(config)])
    assert code == 0, capsys.readouterr().err
    (summary_path,) = (tmp_path / "runs").glob("voc_tiny/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "finished" and summary["task"] == "MultilabelTask" and summary["main_metric"] == "map"
    final = summary["final"]
    assert 0.0 <= final["test/map"] <= 1.0 and {"test/f1", "test/loss", "val/map"} <= set(final), final
    per_class = summary["test_details"]["per_class_ap"]
    assert list(per_class) == list(VOC_CLASSES)
    present = {VOC_CLASSES[c] for i in ids[16:] for c, v in enumerate(expected_row(i, objects=objects)) if v == 1}
    assert {n for n, ap in per_class.items() if ap is not None} == present, per_class
    assert all(0.0 <= per_class[n] <= 1.0 for n in present)
    assert per_class["person"] is None, "difficult-only positives are ignored, so person has no AP"


# ---------------------------------------------------------------------------------------------------------------
# The seed study's configs

VOC_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "voc"


@pytest.mark.parametrize("name", ["resnet18_v1", "resnet18_v2", "resnet18_v3"])
def test_seed_study_config_trains_its_short_variant(tmp_path: Path, capsys, short_variant, name: str) -> None:
    config = VOC_CONFIGS / f"{name}.yaml"
    documented = short_variant(config)
    keys = {s.split("=")[0] for s in documented}
    assert keys <= {"trainer.epochs", "data.subset", "data.test_subset", "data.image_size"}, documented
    objects = {f"{i:06d}": [(VOC_CLASSES[i % 3], 0), (VOC_CLASSES[3 + i % 2], 0)] for i in range(1, 25)}
    ids = sorted(objects)
    make_voc(tmp_path / "data", objects=objects, splits={"trainval": ids[:16], "test": ids[16:]})
    out = tmp_path / "runs"
    tiny = [  # after the documented ones, so these win: 32 px, 16 images, on the CPU, no files outside tmp_path
        "data.subset=16",
        "data.image_size=32",
        f"data.root={tmp_path / 'data'}",
        "data.num_workers=0",
        "data.download=false",
        "trainer.device=cpu",
        f"trainer.out_dir={out}",
        "trainer.checkpoint_every_minutes=null",
        "trainer.progress=lines",
    ]
    code = main(["train", str(config), *sum((["--set", s] for s in documented + tiny), [])])
    assert code == 0, capsys.readouterr().err
    (summary_path,) = out.glob(f"{name}/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 1, summary
    assert summary["main_metric"] == "map" and 0.0 <= summary["final"]["test/map"] <= 1.0, summary["final"]
    resolved = yaml.safe_load((summary_path.parent / layout.CONFIG).read_text())
    assert resolved["model"]["name"] == "timm:resnet18" and resolved["data"]["image_size"] == 32
