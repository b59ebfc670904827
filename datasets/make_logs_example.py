"""Write the small generated shop log that ``datasets/logs_example.yaml`` maps.

    python datasets/make_logs_example.py [FOLDER]     # default: datasets/logs_example/

Generated, not foreign data: 30 customers browse 60 products of 8 categories in
2-3 sessions of 2-8 events each, from 1 March 2024 over about five weeks. Each session keeps to one category
(so the next event's category is predictable, the point of a category intent),
views lead to carts, favourites and purchases. The files are committed (a few KB), so
the documented commands run from a fresh clone; ``tests/test_logs_example.py`` checks
that this script still writes exactly them. Deterministic: stdlib ``random`` with a
fixed seed, text written by hand (no library whose float formatting could change).

events.csv    customer_id, product_id, event_time (ISO-8601, some with an offset),
              event_type (view | cart | fav | purchase), dwell_s, device (web | app)
products.csv  product_id, category_id (integer ids), tags ("sale|eco", may be empty),
              brand, price, launched (YYYY-MM-DD)
"""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

SEED = 11
CUSTOMERS = 30
PRODUCTS = 60
CATEGORIES = (101, 102, 103, 104, 105, 106, 107, 108)
TAGS = ("sale", "eco", "new", "bestseller")
BRANDS = ("acme", "globex", "initech", "umbrella", "hooli")
START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 60
FOLDER = Path(__file__).resolve().parent / "logs_example"


def products(rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for k in range(PRODUCTS):
        tags = [tag for tag in TAGS if rng.random() < 0.25]
        launched = START - timedelta(days=rng.randrange(0, 400))
        rows.append(
            {
                "product_id": f"P{k + 1:03d}",
                "category_id": str(CATEGORIES[k % len(CATEGORIES)]),
                "tags": "|".join(tags),
                "brand": rng.choice(BRANDS),
                "price": f"{rng.randrange(199, 9999) / 100:.2f}",
                "launched": launched.strftime("%Y-%m-%d"),
            }
        )
    return rows


def events(rng: random.Random, catalogue: list[dict[str, str]]) -> list[dict[str, str]]:
    by_category: dict[str, list[str]] = {}
    for product in catalogue:
        by_category.setdefault(product["category_id"], []).append(product["product_id"])
    categories = sorted(by_category)
    rows = []
    for c in range(CUSTOMERS):
        customer = f"C{c + 1:02d}"
        favourites = rng.sample(categories, 3)  # most sessions stay in these
        device = rng.choice(("web", "app"))
        when = START + timedelta(hours=rng.randrange(0, 24 * 7))
        for _ in range(rng.randrange(2, 4)):  # sessions
            category = rng.choice(favourites) if rng.random() < 0.8 else rng.choice(categories)
            viewed: list[str] = []
            for _ in range(rng.randrange(2, 9)):  # events of the session
                kind = "view"
                if viewed and rng.random() < 0.3:
                    product = rng.choice(viewed)
                    kind = rng.choice(("cart", "fav", "cart", "purchase"))
                else:
                    product = rng.choice(by_category[category])
                    viewed.append(product)
                dwell = rng.randrange(5, 240) if kind == "view" else rng.randrange(1, 15)
                # A few times with an offset: the recipe respects it (naive = UTC).
                stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
                if rng.random() < 0.1:
                    stamp = (when + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
                rows.append(
                    {
                        "customer_id": customer,
                        "product_id": product,
                        "event_time": stamp,
                        "event_type": kind,
                        "dwell_s": str(dwell),
                        "device": device,
                    }
                )
                when += timedelta(seconds=dwell + rng.randrange(20, 600))
            when += timedelta(days=rng.randrange(1, DAYS // 3), hours=rng.randrange(0, 12))
    return rows


def csv_text(rows: list[dict[str, str]]) -> str:
    """Plain CSV: no value holds a comma, quote or newline, so none needs quoting."""
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(row[c] for c in header) for row in rows]
    return "\n".join(lines) + "\n"


def write(folder: Path = FOLDER) -> list[Path]:
    """Write events.csv and products.csv into ``folder``; the paths written."""
    rng = random.Random(SEED)
    catalogue = products(rng)
    log = events(rng, catalogue)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in (("events.csv", log), ("products.csv", catalogue)):
        path = folder / name
        path.write_text(csv_text(rows))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER):
        print(f"wrote {path}")
