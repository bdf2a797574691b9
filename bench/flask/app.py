"""The write path as the microservice tutorials build it, for bench/run.sh.

A Flask endpoint that, for every request, opens a pika connection, publishes one persistent
message and closes the connection again; served by gunicorn with sync workers:

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
        gunicorn -w 4 -b 127.0.0.1:8000 app:app

To compare like with like, the publish is *confirmed* (channel.confirm_delivery(), mandatory):
the 201 means what the gateway's 201 means. Tutorials usually skip confirms; set
FLASK_CONFIRM=0 to measure that variant (fire-and-forget, no delivery guarantee).
"""

import json
import os
import uuid

import pika
from flask import Flask, Response, request

app = Flask(__name__)
PARAMS = pika.URLParameters(os.environ["AMQP_URL"])
CONFIRM = os.environ.get("FLASK_CONFIRM", "1") != "0"


@app.post("/users")
def create_user():
    body = request.get_data()
    try:
        json.loads(body)
    except ValueError:
        return Response('{"error":"invalid json"}', status=400, mimetype="application/json")
    event_id = str(uuid.uuid4())
    connection = pika.BlockingConnection(PARAMS)
    try:
        channel = connection.channel()
        if CONFIRM:
            channel.confirm_delivery()
        try:
            channel.basic_publish(
                exchange="users",
                routing_key="user.created",
                body=body,
                properties=pika.BasicProperties(
                    delivery_mode=pika.DeliveryMode.Persistent,
                    content_type="application/json",
                    message_id=event_id,
                    type="user.created",
                    app_id="flask-pika",
                ),
                mandatory=True,
            )
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError):
            return Response('{"error":"not accepted"}', status=503, mimetype="application/json")
    finally:
        connection.close()
    return Response(
        json.dumps({"event_id": event_id, "status": "accepted"}),
        status=201,
        mimetype="application/json",
        headers={"Location": f"/users/{event_id}"},
    )
