"""What the sources share, one job a module (the sources themselves are peers of each other).

- ``vocabulary``: class folder names, anatomic sites and ISIC dataset split words;
- ``licenses``: the licence vocabulary and the texts of ``licenses/<lic>.txt``;
- ``table``: reading a metadata CSV, its row loop and the parsing of its cells;
- ``items``: what travels through the import pipeline (``ImportItem``, ``Failure``);
- ``scan``: finding image files below a folder and hashing them (the readability check);
- ``ids``: ISIC ids in file names and the ids assigned to images that have none;
- ``write``: placing the images into the raw layout, their metadata records and report counts.

The import pipeline (folder and challenge): a source builds ``ImportItem``s, then
``scan.hash_items`` -> ``ids.assign_ids`` -> ``write.write_items``. Problems never raise: they
become ``failures`` entries (with the CSV row where there is one).
"""
