#!/usr/bin/env python3
"""Writes the JSON Schemas (2020-12) of the `data` of each Alma event type into this
directory: `python3 schemas/generate.py`. Each file is self-contained (its own $defs), so a
consumer validates with any standard validator and no registry. Their $id is
DEFAULT_BASE + file name: the default of --dataschema-base, so `dataschema` names the file.

The schemas follow Alma's webhook payloads as the fixtures in tests/fixtures/alma show them,
in both integration profile formats: a JSON body (numbers, booleans, null) and an XML body
normalised by almabridge (every value a string, a single repeated element an object rather
than an array, an empty element null). So scalars accept a string as well, lists accept one
object, and members Alma may add later are allowed (additionalProperties is not false). What
they require is what almabridge and consumers rely on: the envelope (id, action) and the
member that holds the record's identity (docs/CLOUDEVENTS.md)."""
import json
import os

DEFAULT_BASE = "urn:almabridge:schemas:1:"
HERE = os.path.dirname(os.path.abspath(__file__))

DEFS = {
    "id": {"description": "an Alma id: digits, as a string or (JSON) an integer",
           "type": ["string", "integer"], "minLength": 1},
    "text": {"type": ["string", "null"]},
    "flag": {"description": "true/false (JSON) or \"true\"/\"false\" (XML)",
             "type": ["boolean", "string", "null"]},
    "number": {"description": "a number (JSON) or its digits (XML)",
               "type": ["number", "string", "null"]},
    "code": {"description": "a code with its description: {\"value\": ..., \"desc\": ...}",
             "type": ["object", "string", "null"],
             "properties": {"value": {"type": ["string", "null"]},
                            "desc": {"type": ["string", "null"]}}},
    "list": {"description": "a list; an XML body with one element gives that element (an "
                            "object or a string)",
             "type": ["array", "object", "string", "null"]},
}


def ref(name):
    return {"$ref": "#/$defs/" + name}


def obj(required=(), **props):
    o = {"type": "object", "properties": props}
    if required:
        o["required"] = list(required)
    return o


def envelope(action, title, required, props):
    props = dict({
        "id": ref("id"),
        "action": {"const": action} if action else {"type": "string", "minLength": 1},
        "institution": ref("code"),
        "event": ref("code"),
        "time": {"type": "string"},
    }, **props)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "description": "The data of almabridge's CloudEvent for an Alma %s webhook: the "
                       "webhook as Alma sent it (JSON) or as almabridge normalised it (XML), "
                       "without the members --redact removed." % (action or "(any)"),
        "type": "object",
        "required": ["id", "action"] + list(required),
        "properties": props,
        "$defs": DEFS,
    }


SCHEMAS = {
    "webhook.json": envelope(None, "Alma webhook", [], {}),
    "job_end.json": envelope("JOB_END", "Alma JOB_END webhook", ["job_instance"], {
        "job_instance": obj(["id"], id=ref("id"), external_id=ref("id"), name=ref("text"),
                            status=ref("code"), progress=ref("number"),
                            submitted_by=ref("code"), submit_time=ref("text"),
                            start_time=ref("text"), end_time=ref("text"),
                            status_date=ref("text"), alert=ref("list"), counter=ref("list"),
                            job_info={"type": ["object", "null"]}, link=ref("text"))}),
    "bib.json": envelope("BIB", "Alma BIB webhook", ["bib"], {
        "bib": obj(["mms_id"], mms_id=ref("id"), title=ref("text"), author=ref("text"),
                   isbn=ref("text"), issn=ref("text"), network_number=ref("list"),
                   suppress_from_publishing=ref("flag"), anies=ref("list"))}),
    "holding.json": envelope("HOLDING", "Alma HOLDING webhook", ["holding"], {
        "holding": obj(["holding_id"], holding_id=ref("id"))}),
    "item.json": envelope("ITEM", "Alma ITEM webhook", ["item"], {
        "item": obj(["item_data"],
                    bib_data=obj(mms_id=ref("id")), holding_data=obj(holding_id=ref("id")),
                    item_data=obj(["pid"], pid=ref("id"), barcode=ref("text"),
                                  base_status=ref("code"),
                                  awaiting_reshelving=ref("flag")))}),
    "loan.json": envelope("LOAN", "Alma LOAN webhook", ["item_loan"], {
        "item_loan": obj(["loan_id"], loan_id=ref("id"), user_id=ref("text"),
                         item_barcode=ref("text"), item_id=ref("id"), mms_id=ref("id"),
                         holding_id=ref("id"), due_date=ref("text"), loan_date=ref("text"),
                         loan_status=ref("text"), process_status=ref("text"),
                         circ_desk=ref("code"), library=ref("code"),
                         renewable=ref("flag"))}),
    "request.json": envelope("REQUEST", "Alma REQUEST webhook", ["user_request"], {
        "user_request": obj(["request_id"], request_id=ref("id"),
                            user_primary_id=ref("text"), request_type=ref("text"),
                            request_sub_type=ref("code"), mms_id=ref("id"),
                            item_id=ref("id"), request_status=ref("text"),
                            barcode=ref("text"))}),
    "user.json": envelope("USER", "Alma USER webhook", ["webhook_user"], {
        "webhook_user": obj(["user"], method=ref("text"), cause=ref("text"),
                            user=obj(["primary_id"], primary_id={"type": "string",
                                                                 "minLength": 1},
                                     record_type=ref("code"), status=ref("code"),
                                     user_group=ref("code"),
                                     contact_info={"type": ["object", "null"]},
                                     user_identifier=ref("list")))}),
    "notification.json": envelope("NOTIFICATION", "Alma NOTIFICATION webhook",
                                  ["notification_data"], {
        "notification_data": obj(general_data=obj(letter_name=ref("text"),
                                                  letter_type=ref("text")),
                                 receiver={"type": ["object", "null"]},
                                 item=ref("list"), user_request=ref("list"))}),
}


def main():
    for name, schema in SCHEMAS.items():
        schema = dict({"$id": DEFAULT_BASE + name}, **schema)
        with open(os.path.join(HERE, name), "w") as f:
            json.dump(schema, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
