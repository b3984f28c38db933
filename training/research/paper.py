"""The DeDe paper's published numbers (Hou et al., CVPR 2025), for side-by-side comparison in the reports.

Detection (Table 1: balanced test set; Table 3: 1% triggered), per detector, auxiliary setting and attack:
(TPR %, FPR %, AUC). DeDe's ``ood`` rows used STL-10 as the auxiliary set. DECREE's starred values (a
successful detection of the model backdoor) are marked by ``DECREE_DETECTED``; "-" cells are absent.
Downstream (Table 2: CIFAR-10; Table 4: GTSRB): (CA %, ASR %) per row and attack.
"""

from __future__ import annotations

ATTACK_ORDER = ("badencoder", "ctrl", "drupe", "clip-backdoor", "badclip")

# (detector, aux) -> attack -> (TPR %, FPR %, AUC)
TABLE1: dict[tuple[str, str], dict[str, tuple[float, float, float]]] = {
    ("decree", "id"): {"badencoder": (46.4, 70.6, 0.362), "drupe": (44.7, 70.6, 0.344),
                       "clip-backdoor": (30.1, 54.8, 0.348)},
    ("asset", "id"): {"badencoder": (84.9, 4.0, 0.978), "ctrl": (89.6, 30.2, 0.799), "drupe": (94.7, 27.6, 0.858),
                      "clip-backdoor": (30.0, 0.0, 0.555), "badclip": (99.8, 49.4, 0.773)},
    ("dede", "id"): {"badencoder": (93.1, 6.9, 0.981), "ctrl": (87.2, 12.8, 0.912), "drupe": (97.6, 2.4, 0.997),
                     "clip-backdoor": (100.0, 0.0, 1.0), "badclip": (85.0, 14.9, 0.925)},
    ("dede", "ood"): {"badencoder": (97.2, 2.83, 0.993), "ctrl": (88.1, 13.3, 0.911), "drupe": (92.1, 7.9, 0.976),
                      "clip-backdoor": (100.0, 0.0, 1.0), "badclip": (72.1, 27.9, 0.798)},
}
TABLE3: dict[tuple[str, str], dict[str, tuple[float, float, float]]] = {
    ("decree", "id"): {"badencoder": (66.0, 42.1, 0.336), "drupe": (68.0, 49.8, 0.366),
                       "clip-backdoor": (70.0, 49.7, 0.363)},
    ("asset", "id"): {"badencoder": (100.0, 25.0, 0.901), "ctrl": (31.1, 91.0, 0.799), "drupe": (94.8, 27.6, 0.858),
                      "clip-backdoor": (54.4, 47.8, 0.555), "badclip": (100.0, 25.0, 0.943)},
    ("dede", "id"): {"badencoder": (92.0, 8.3, 0.978), "ctrl": (90.0, 19.3, 0.898), "drupe": (98.5, 3.1, 0.998),
                     "clip-backdoor": (100.0, 0.0, 1.0), "badclip": (84.0, 19.4, 0.903)},
    ("dede", "ood"): {"badencoder": (96.5, 8.2, 0.983), "ctrl": (81.0, 19.3, 0.853), "drupe": (95.5, 8.3, 0.979),
                      "clip-backdoor": (100.0, 0.0, 1.0), "badclip": (88.0, 19.3, 0.936)},
}
DECREE_DETECTED = {"badencoder", "clip-backdoor"}  # starred in Tables 1 and 3

# dataset -> row -> attack ('none' = No Attack) -> (CA %, ASR %)
DOWNSTREAM: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "cifar10": {
        "no-defence-poisoned": {"none": (90.5, 18.8), "badencoder": (86.3, 100.0), "ctrl": (73.9, 95.4),
                                "drupe": (85.6, 100.0), "clip-backdoor": (79.4, 100.0), "badclip": (82.8, 98.3)},
        "no-defence-clean": {"none": (90.7, 10.2), "badencoder": (86.4, 99.9), "ctrl": (74.0, 63.8),
                             "drupe": (85.8, 96.3), "clip-backdoor": (79.7, 98.4), "badclip": (83.1, 11.7)},
        "asset": {"badencoder": (86.3, 55.3), "ctrl": (72.7, 49.3), "drupe": (85.9, 53.7),
                  "clip-backdoor": (78.5, 98.3), "badclip": (81.1, 97.4)},
        "dede": {"badencoder": (86.5, 1.3), "ctrl": (72.2, 4.8), "drupe": (85.9, 2.1), "clip-backdoor": (79.7, 0.0),
                 "badclip": (81.6, 30.5)},
    },
    "gtsrb": {
        "no-defence-poisoned": {"none": (85.14, 19.16), "badencoder": (82.03, 99.36), "ctrl": (73.9, 91.57),
                                "drupe": (85.6, 99.46), "clip-backdoor": (73.76, 97.24), "badclip": (76.99, 98.59)},
        "no-defence-clean": {"none": (85.25, 10.85), "badencoder": (82.26, 97.27), "ctrl": (67.48, 64.26),
                             "drupe": (81.60, 97.03), "clip-backdoor": (74.51, 98.05), "badclip": (79.74, 11.69)},
        "asset": {"badencoder": (83.24, 54.67), "ctrl": (67.45, 50.51), "drupe": (80.85, 54.07),
                  "clip-backdoor": (73.92, 96.42), "badclip": (76.19, 98.38)},
        "dede": {"badencoder": (82.86, 2.99), "ctrl": (68.61, 4.43), "drupe": (80.46, 0.91),
                 "clip-backdoor": (74.41, 2.21), "badclip": (76.20, 30.60)},
    },
}


def paper_detection(test: str, detector: str, aux: str, attack: str) -> tuple[float, float, float] | None:
    """(TPR %, FPR %, AUC) the paper reports for a cell, or None. ``test``: 'balanced' or 'unbalanced-1%'."""
    table = TABLE1 if test == "balanced" else TABLE3
    return table.get((detector, aux), {}).get(attack)
