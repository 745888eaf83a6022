"""Labelled image folders, listed lazily: class-per-folder trees and ``file label`` lists.

Three shapes of DATA (:func:`open_dataset`):

* class folders (torchvision's ImageFolder, mmpretrain's CustomDataset): every sub-folder of DATA
  is a class, classes are numbered in sorted folder-name order, images are found recursively in
  torchvision's order (``sorted(os.walk(...))``, then sorted file names); hidden folders are
  skipped, and so is (reported in the notes) whatever is not a regular file or folder inside
  DATA: FIFOs, devices, links out of DATA (:mod:`.walk`, the walker ``verify --images`` uses
  too);
* a labels file (``--labels FILE``): one ``file label`` per line, file relative to DATA (how
  ImageNet validation lists are distributed, e.g. mmpretrain's ``meta/val.txt``); a label is a
  class index, or a class id looked up in a classes file;
* a flat folder of images, unlabelled (only a headless model can use it).

A classes file (``--classes FILE``) numbers classes by line: line i names class i by its first
word (``synsets.txt``, or ``LOC_synset_mapping.txt``: ``n01440764 tench, Tinca tinca``).  With it,
class folders are numbered by the file, not by their sorted position.

Nothing here holds the image list: a dataset is counted once, then walked again while it is
evaluated, so memory does not grow with the number of images (one class folder's names at a
time).  ``limit`` picks images spread evenly over the whole dataset.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from ..errors import BadInput, printable
from ..io.text import text_lines
from ..rules.limits import MAX_CLASSES, MAX_LABEL_LINE
from .pipeline import IMAGE_EXTENSIONS
from .walk import Walker

__all__ = ["Item", "Dataset", "open_dataset", "read_classes", "spread"]


@dataclass(frozen=True)
class Item:
    """One image of a dataset: where it is, what to call it, its class (-1: unlabelled)."""

    path: str
    name: str  # relative to the dataset root
    label: int


@dataclass
class Dataset:
    """A listed (counted, not held) dataset; :meth:`items` walks it again."""

    root: str
    kind: str  # 'class folders', 'labels file', 'flat folder'
    total: int  # images listed
    class_names: List[str] = field(default_factory=list)  # by class index; [] when unlabelled
    labels_file: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    _walk: Callable[[], Iterator[Item]] = field(default=lambda: iter(()), repr=False)

    @property
    def labelled(self) -> bool:
        return self.kind != "flat folder"

    def items(self, limit: Optional[int] = None) -> Iterator[Item]:
        """Every image in order, or ``limit`` of them spread evenly (see :func:`spread`)."""
        wanted = spread(self.total, limit)
        target = next(wanted, None)
        for i, item in enumerate(self._walk()):
            if target is None:
                return
            if i == target:
                yield item
                target = next(wanted, None)

    def selected(self, limit: Optional[int] = None) -> int:
        return self.total if limit is None else min(limit, self.total)


def spread(total: int, limit: Optional[int]) -> Iterator[int]:
    """Indices 0..total-1, or ``limit`` of them evenly spaced (floor(i * total / limit)): a
    quick look at a class-ordered dataset sees every part of it, not only its first classes."""
    if limit is None or limit >= total:
        yield from range(total)
        return
    for i in range(limit):
        yield i * total // limit


def _lines(path: str, what: str) -> Iterator[Tuple[int, str]]:
    """(line number, stripped text) of the non-empty, non-comment lines of a text file, read
    with the byte cap of every text input (regular files only)."""
    return text_lines(path, what, MAX_LABEL_LINE)


def read_classes(path: str) -> List[Tuple[str, str]]:
    """(id, description) by class index from a classes file (first word of each line)."""
    out: List[Tuple[str, str]] = []
    seen: Dict[str, int] = {}
    for n, text in _lines(path, "classes file"):
        ident, _, rest = text.partition(" ")
        if ident in seen:
            raise BadInput(f"{path}:{n}: class {printable(ident)!r} is also on line "
                           f"{seen[ident]}")
        seen[ident] = n
        out.append((ident, rest.strip()))
        if len(out) > MAX_CLASSES:
            raise BadInput(f"{path}: more than {MAX_CLASSES:,} classes")
    if not out:
        raise BadInput(f"{path}: no classes in this file")
    return out


def _class_folders(walker: Walker, folders: List[str],
                   classes: Optional[List[Tuple[str, str]]], num_classes: Optional[int]) -> Dataset:
    root = walker.root
    notes: List[str] = []
    if classes is not None:
        index = {ident: i for i, (ident, _) in enumerate(classes)}
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise BadInput(f"{root}: class folder {printable(unknown[0])!r} is not in the "
                           f"classes file ({len(unknown)} such folder(s))")
        labels = [index[f] for f in folders]
        names = [c for c, _ in classes]
    else:
        labels = list(range(len(folders)))
        names = list(folders)
        if num_classes is not None and len(folders) > num_classes:
            raise BadInput(f"{root}: {len(folders)} class folders, but the model has "
                           f"{num_classes} classes",
                           hint="give --classes FILE to say which class each folder is")
        if num_classes is not None and len(folders) < num_classes:
            notes.append(f"{len(folders)} class folders for a {num_classes}-class model: folder i "
                         f"(sorted by name) is taken as class i; if the folders are a subset of "
                         f"the model's classes, give --classes FILE")
    counts = [len(walker.images(f)) for f in folders]
    notes.extend(filter(None, [walker.skips.note()]))

    def walk() -> Iterator[Item]:
        again = Walker(root)  # what was skipped is already in the notes
        for folder, label in zip(folders, labels):
            for rel in again.images(folder):
                yield Item(os.path.join(root, rel), rel, label)

    return Dataset(root=root, kind="class folders", total=sum(counts), class_names=names,
                   notes=notes, _walk=walk)


def _parse_label(text: str, where: str, index: Optional[Dict[str, int]]) -> Tuple[str, int]:
    name, sep, label = text.rpartition(" ") if " " in text or "\t" in text else \
        text.rpartition(",")
    name, label = name.strip().rstrip(",").strip(), label.strip()
    if not sep or not name:
        raise BadInput(f"{where}: expected 'file label', got {printable(text[:80])!r}")
    if label.lstrip("-").isdigit():
        return name, int(label)
    if index is None:
        raise BadInput(f"{where}: label {printable(label[:40])!r} is not a class index",
                       hint="give --classes FILE to look class ids (e.g. synsets) up")
    if label not in index:
        raise BadInput(f"{where}: class {printable(label[:40])!r} is not in the classes file")
    return name, index[label]


def _labels_file(root: str, labels: str, classes: Optional[List[Tuple[str, str]]],
                 num_classes: Optional[int]) -> Dataset:
    index = {ident: i for i, (ident, _) in enumerate(classes)} if classes is not None else None
    bound = len(classes) if classes is not None else num_classes
    total = 0
    for n, text in _lines(labels, "labels file"):  # validate every line before any image
        _, label = _parse_label(text.replace("\t", " "), f"{labels}:{n}", index)
        if label < 0 or (bound is not None and label >= bound):
            raise BadInput(f"{labels}:{n}: class {label} is out of range (0..{(bound or 1) - 1})")
        total += 1
    if total == 0:
        raise BadInput(f"{labels}: no 'file label' lines in this file")

    def walk() -> Iterator[Item]:
        for n, text in _lines(labels, "labels file"):
            name, label = _parse_label(text.replace("\t", " "), f"{labels}:{n}", index)
            yield Item(os.path.join(root, name), name, label)

    names = [c for c, _ in classes] if classes is not None else (
        [str(i) for i in range(num_classes)] if num_classes else [])
    return Dataset(root=root, kind="labels file", total=total, class_names=names,
                   labels_file=labels, _walk=walk)


def open_dataset(data: str, *, labels: Optional[str] = None, classes: Optional[str] = None,
                 num_classes: Optional[int] = None, need_labels: bool = True) -> Dataset:
    """DATA as a :class:`Dataset` (see the module doc); BadInput when it cannot be one.

    ``num_classes`` (the model's head) bounds the labels; ``need_labels=False`` (a headless
    model) also accepts a flat folder of unlabelled images."""
    root = os.fspath(data)
    if not os.path.isdir(root):
        raise BadInput(f"{root}: not a directory (DATA is a folder of class folders, or of images "
                       f"with --labels FILE)")
    class_list = read_classes(classes) if classes is not None else None
    if class_list is not None and num_classes is not None and len(class_list) != num_classes:
        raise BadInput(f"{classes}: {len(class_list)} classes, but the model has {num_classes}")
    if labels is not None:
        return _labels_file(root, os.fspath(labels), class_list, num_classes)
    walker = Walker(root)
    folders = walker.folders()
    if folders:
        ds = _class_folders(walker, folders, class_list, num_classes)
        if ds.total == 0:
            skipped = walker.skips.note()
            raise BadInput(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its "
                           f"{len(folders)} class folder(s)"
                           + (f" ({skipped})" if skipped else ""))
        return ds
    flat = walker.images(recursive=False)
    if not flat:
        note = walker.skips.note()
        raise BadInput(f"{root}: no class folders and no images in this folder"
                       + (f" ({note})" if note else ""))
    if need_labels:
        raise BadInput(f"{root}: a flat folder of images has no labels",
                       hint="put each class in its own folder, or give --labels FILE "
                            "('file label' per line)")

    def walk() -> Iterator[Item]:
        for name in Walker(root).images(recursive=False):
            yield Item(os.path.join(root, name), name, -1)

    return Dataset(root=root, kind="flat folder", total=len(flat),
                   notes=list(filter(None, [walker.skips.note()])), _walk=walk)
