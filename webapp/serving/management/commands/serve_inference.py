"""``manage.py serve_inference --port 8001``: the inference process (Procfile role ``inference``)."""

import os

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Hold each project's served model version and answer the web app's generation requests, batched."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=int(os.environ.get("REWARDLOOP_INFERENCE_PORT", "8001")))
        parser.add_argument("--window-ms", type=float, default=5.0,
                            help="how long the first request of an idle engine waits for others to share its prefill (default 5 ms)")
        parser.add_argument("--hold-ms", type=float, default=250.0,
                            help="the longest a step waits for a request still being received, so it joins that step's "
                                 "prefill (default 250 ms; 0: never waits)")
        parser.add_argument("--max-batch", type=int, default=32, help="rows decoding at once; later requests wait for a free row (default 32)")
        parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
        parser.add_argument("--poll-s", type=float, default=1.0, help="how often the served version is checked")
        parser.add_argument("--no-prefix-cache", action="store_true",
                            help="prefill every prompt in full instead of reusing the chat template's cached prefix")
        parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")

    def handle(self, *args, **options):
        import torch
        from django.conf import settings

        from webapp.serving.inference_server import serve

        if options["threads"]:
            torch.set_num_threads(options["threads"])
        serve(host=options["host"], port=options["port"], window_s=options["window_ms"] / 1000,
              max_batch=options["max_batch"], precision=options["precision"], poll_s=options["poll_s"],
              prefix_cache=not options["no_prefix_cache"], hold_s=options["hold_ms"] / 1000,
              timeline_len=settings.REWARDLOOP_SERVE_TIMELINE_LEN)
