# The DIDS-style peer of `cargo xtask bench fleet`: the way a Python IDS built on pika ships
# alerts, one message at a time.
#
#   fleet_peer.py publish DB AFTER COUNT   reads COUNT rows with id > AFTER from an agent's
#                                          alerts table and publishes each one, persistent, with
#                                          publisher confirms (BlockingConnection waits for the
#                                          broker's ack of every message before the next).
#   fleet_peer.py consume DB READY         inserts every message into its own SQLite table,
#                                          commits per message and acks after the commit; touches
#                                          READY once it is consuming.
#
# The broker URL (with the password) comes from the environment (PEER_URL), never argv.
import json
import os
import socket
import sqlite3
import sys
from datetime import datetime, timezone

import pika

QUEUE = "dids.alerts"


def channel():
    connection = pika.BlockingConnection(pika.URLParameters(os.environ["PEER_URL"]))
    ch = connection.channel()
    # A durable classic queue, as such a stack declares it.
    ch.queue_declare(queue=QUEUE, durable=True)
    return connection, ch


def publish(db_path, after, count):
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    connection, ch = channel()
    ch.confirm_delivery()
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json", type="alert")
    host, hostname = "peer-host", socket.gethostname()
    rows = db.execute(
        "SELECT id, time, kind, item_id, collector, what FROM alerts WHERE id > ? ORDER BY id LIMIT ?",
        (after, count),
    )
    for seq, time, kind, item_id, collector, what in rows:
        # The same message body the agent sends (docs/fleet.md), so both sides move the same bytes.
        alert = {"time": time, "kind": kind, "collector": collector, "id": item_id}
        alert.update(json.loads(what))
        body = {"v": 1, "host": host, "hostname": hostname, "epoch": 1, "seq": seq, "time": time, "kind": kind,
                "alert": alert}
        # Blocks until the broker confirmed this message; raises if it was nacked or returned.
        ch.basic_publish(exchange="", routing_key=QUEUE, body=json.dumps(body), properties=properties,
                         mandatory=True)
    connection.close()


def consume(db_path, ready):
    db = sqlite3.connect(db_path)
    # The durability the ids collector uses (WAL, synchronous FULL), so the comparison is about
    # per-message versus batched work, not about looser settings.
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY, host TEXT, epoch INTEGER, seq INTEGER, "
        "time TEXT, kind TEXT, alert TEXT, received TEXT, UNIQUE (host, epoch, seq))"
    )
    db.commit()
    connection, ch = channel()
    ch.basic_qos(prefetch_count=100)

    def on_message(ch, method, properties, body):
        message = json.loads(body)
        received = datetime.now(timezone.utc).isoformat()
        db.execute(
            "INSERT OR IGNORE INTO alerts (host, epoch, seq, time, kind, alert, received) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (message["host"], message["epoch"], message["seq"], message["time"], message["kind"],
             json.dumps(message["alert"]), received),
        )
        db.commit()
        ch.basic_ack(delivery_tag=method.delivery_tag)

    ch.basic_consume(queue=QUEUE, on_message_callback=on_message)
    open(ready, "w").close()
    ch.start_consuming()


if __name__ == "__main__":
    if sys.argv[1] == "publish":
        publish(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        consume(sys.argv[2], sys.argv[3])
