"""The seed's scenario: made-up temperatures from the random reader into a CSV file.

    flowcollect run pipelines/random_csv.py --duration 5

Needs nothing but flowcollect: a first pipeline to copy. Values go to ``out/random.csv``
beside this file.
"""

from __future__ import annotations

from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import CsvFileDataWriter

# Eight temperatures of a cold room, 15 to 18 °C; the first four also every 200 ms for a
# fast context, so those are read once at the instants both want and shared.
ROOM = [Variable(id=n, address=f"room/temperature/{n}", reader="random") for n in range(1, 9)]

pipeline = Pipeline(
    name="random_csv",
    description="Random temperatures into out/random.csv",
    readers=[RandomDataReader(min_value=15.0, max_value=18.0)],
    writers=[CsvFileDataWriter("out/random.csv", append=False)],
    contexts=[
        DataCollectionContext(id=1, interval_ms=1000, variables=ROOM),
        DataCollectionContext(id=2, interval_ms=200, variables=ROOM[:4]),
    ],
)
