#!/usr/bin/env python3
"""A real SMTP server for infermon's email tests (aiosmtpd), on loopback.

    smtp_server.py PORT MAILDIR [--cert CERT --key KEY [--require-starttls]]

Every message is saved to MAILDIR as NNNN.json: envelope sender, recipients,
the raw message, and whether the session was under TLS. Prints "ready" once
listening; runs until killed.
"""
import json
import os
import ssl
import sys
import threading

from aiosmtpd.controller import Controller


class Save:
    def __init__(self, maildir):
        self.maildir = maildir
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(self.maildir, f"{self.n:04}.json")
        self.n += 1
        record = {"from": envelope.mail_from, "to": envelope.rcpt_tos,
                  "data": envelope.content.decode("utf-8", "replace"),
                  "tls": session.ssl is not None}
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 OK"


def main():
    port, maildir = int(sys.argv[1]), sys.argv[2]
    args = sys.argv[3:]
    kwargs = {}
    if "--cert" in args:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args[args.index("--cert") + 1], args[args.index("--key") + 1])
        kwargs["tls_context"] = ctx
        kwargs["require_starttls"] = "--require-starttls" in args
    elif "--require-starttls" in args:
        sys.exit("--require-starttls needs --cert and --key")
    controller = Controller(Save(maildir), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
