"""reports/README.md's data sections: sample images, class balance, data cleaning, splits."""

from __future__ import annotations

from melanoma.report import fmt
from melanoma.report.inputs import Study
from melanoma.report.names import BALANCE, SAMPLES, SPLIT_NAMES
from melanoma.report.tables import nums


def data_sections(study: Study) -> list[str]:
    """Sample images, class balance, data cleaning and splits, from the prepare and split reports."""
    p, s = study.prepare, study.split
    balance = fmt.table(
        ["class", "images", "fraction"],
        [
            ["melanoma", fmt.num(p.get("n_melanoma")), fmt.num(p.get("melanoma_fraction"))],
            ["not melanoma", fmt.num(p.get("n_not_melanoma")), ""],
            ["all kept", fmt.num(p.get("n_kept")), ""],
        ],
    )
    cleaning = fmt.table(
        ["step", "images"],
        [
            ["metadata rows (before)", fmt.num(p.get("n_metadata_rows"))],
            ["dropped: unlabeled (no melanoma/benign diagnosis)", fmt.num(p.get("n_unlabeled"))],
            ["dropped: manipulated image", fmt.num(p.get("n_manipulated"))],
            ["dropped: metadata row without an image file", fmt.num(p.get("n_missing_image"))],
            ["dropped: corrupt (cannot be decoded)", fmt.num(p.get("n_corrupt"))],
            ["dropped: duplicate pixels", fmt.num(p.get("n_duplicates"))],
            ["kept (after)", fmt.num(p.get("n_kept"))],
            ["image files without a metadata row (ignored)", fmt.num(p.get("n_orphan_images"))],
        ],
    )
    rows = [
        [name, *nums(r, "n", "n_melanoma", "n_benign", "melanoma_fraction", "n_groups")]
        for name in (*SPLIT_NAMES, "overall")
        if isinstance(r := s.get(name), dict)
    ]
    splits = fmt.table(["split", "images", "melanoma", "not melanoma", "melanoma fraction", "patients"], rows)
    return [
        "## Sample images",
        "",
        "Prepared images (the model's input), a seeded choice per class; titles are ISIC ids.",
        "",
        fmt.figure("Sample images per class", SAMPLES),
        "",
        "## Class balance",
        "",
        balance,
        "",
        fmt.figure("Class balance per split", BALANCE),
        "",
        "## Data cleaning",
        "",
        cleaning,
        "",
        "## Splits",
        "",
        "Stratified by label and grouped by patient (else lesion), so no patient is in two splits "
        f"(patients found in more than one split: {fmt.num(s.get('group_overlap'))}). "
        "`patients` counts the groups.",
        "",
        splits,
    ]
