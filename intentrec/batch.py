"""Names of the tensors in a batch: the contract between the DataModule, models and module.

A batch is a ``dict[str, Tensor]``; every tensor is left-padded to ``seq_len = data.max_len``
(the latest event is at position ``seq_len - 1``). Position k holds input event k; its
targets describe the event that follows it in the user's history.

    ITEM          Long  [batch, seq_len]      input item ids, 0 = padding
    TIMESTAMP     Long  [batch, seq_len]      input event epoch seconds (0 at padding)
    PADDING_MASK  Bool  [batch, seq_len]      True at real input events
    feature(name) per FeatureSpec.kind:
                  categorical        Long  [batch, seq_len]         (0 = padding)
                  multi_categorical  Long  [batch, seq_len, max_values] (0-padded)
                  numeric            Float [batch, seq_len]
    TARGET_ITEM   Long  [batch, seq_len]      next item id, 0 where no next event
    target_intent(name) per IntentSpec.kind:
                  single  Long  [batch, seq_len]               class id, -100 = no label
                  multi   Float [batch, seq_len, num_classes]  multi-hot
    TARGET_WEIGHT Float [batch, seq_len]      duration weight of the target event
    TARGET_MASK   Bool  [batch, seq_len]      positions whose target counts in this stage
                                              (train targets in training, val targets in
                                              validation, ...); never True at padding
    USER          Long  [batch]               encoded user id (1-based)
    TARGET_EVENT  Long  [batch, seq_len]      the target event's row in the cached event table
                                              (0 at padding): pairs a target across runs
    TARGET_SLICE  Long  [batch, seq_len]      evaluation only, with ``eval.slice_by``: the
                                              target event's value code in that slice
                                              (-1 at padding or where it is null)
"""

ITEM = "item"
TIMESTAMP = "timestamp"
PADDING_MASK = "padding_mask"
TARGET_ITEM = "target/item"
TARGET_WEIGHT = "target/weight"
TARGET_MASK = "target/mask"
USER = "user"
TARGET_EVENT = "target/event"
TARGET_SLICE = "target/slice"
IGNORE_INDEX = -100


def feature(name: str) -> str:
    return f"feature/{name}"


def target_intent(name: str) -> str:
    return f"target/intent/{name}"
