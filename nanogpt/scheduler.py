"""The serving side of the generation engine: one worker thread drives a BatchEngine (generate.py) for requests
that arrive on an asyncio event loop.

A Job is one request's completions; the Scheduler admits jobs into the engine as slots free up (a job that arrives
while others generate joins the running batch at the next step, and leaves it when it finishes), keeps at most
max_queue jobs waiting beyond the free places, drops the completions of cancelled jobs before the next step, and
hands every event back to the job's event loop. It knows nothing of HTTP: api.py turns its refusals into answers.
"""

import asyncio
import logging
import threading
from collections import deque
from contextlib import nullcontext

log = logging.getLogger("nanogpt.serve")


class QueueFull(Exception):
    """No room: the batch is full and max_queue jobs wait already."""


class ShuttingDown(Exception):
    """The server is shutting down: no new jobs, and those left when the worker stops end with this."""


class Job:
    """One request's completions, and the queue their events reach the request's handler through."""

    def __init__(self, completions, loop):
        self.completions = completions
        self.loop = loop
        self.events = asyncio.Queue()
        self.unfinished = len(completions)  # counted by the worker thread

    def deliver(self, item):
        """From the worker thread: an event (index, text, finish_reason), or an exception that ends the job."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class Scheduler:
    """Feeds requests to a BatchEngine from one worker thread.

    A request waits in a FIFO queue until the batch has room for all its completions, then joins it at the next
    step; at most max_queue requests may wait beyond the places the batch has free. Only the worker thread touches the engine; the event loop only queues and cancels jobs.
    """

    def __init__(self, engine, max_queue, autocast=nullcontext):
        self.engine = engine
        self.max_queue = max_queue
        self.autocast = autocast
        self.cond = threading.Condition()
        self.waiting = deque()  # jobs not yet started
        self.running = []  # jobs in the batch
        self.to_cancel = []  # jobs whose clients left: their completions leave the batch before the next step
        self.free = engine.free  # places in the batch after the last admission: jobs waiting for those do not queue
        self.refusing = False  # shutting down: no new jobs
        self.closed = False  # the worker ends, failing what is left
        self.thread = threading.Thread(target=self._work, name="generate", daemon=True)
        self.thread.start()

    def submit(self, job):
        with self.cond:
            if self.refusing:
                raise ShuttingDown("the server is shutting down")
            if len(self.waiting) >= self.max_queue + self.free:
                raise QueueFull(f"the server is busy: {len(self.waiting)} requests are waiting already; retry "
                                "later")
            self.waiting.append(job)
            self.cond.notify()

    def cancel(self, job):
        """Drop a job whose client left or ran out of time; its slots are free at the next step."""
        with self.cond:
            if job in self.waiting:
                self.waiting.remove(job)
            elif job in self.running:
                self.running.remove(job)
                self.to_cancel.append(job)
                self.cond.notify()

    def counts(self):
        with self.cond:
            return {"running": len(self.running), "waiting": len(self.waiting)}

    def idle(self):
        with self.cond:
            return not self.waiting and not self.running

    def refuse(self):
        with self.cond:
            self.refusing = True

    def close(self):
        """Stop the worker; jobs still waiting or running end with ShuttingDown. Blocks until it has stopped."""
        with self.cond:
            self.refusing = self.closed = True
            self.cond.notify()
        self.thread.join()

    def _work(self):
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.closed or self.waiting or self.to_cancel or self.engine.running)
                if self.closed:
                    self._fail(list(self.waiting) + self.running, ShuttingDown("the server is shutting down"))
                    self.waiting.clear()
                    return
                self._drop_cancelled()
                self._admit()
                self.free = self.engine.free
                if not self.engine.running:
                    continue
            try:
                with self.autocast():
                    events = self.engine.step()
            except Exception as e:  # a bug or a device failure: the batch's requests get a 500, serving goes on
                log.exception("generation step failed")
                with self.cond:
                    self._fail(self.running, e)
                continue
            self._deliver(events)

    def _drop_cancelled(self):
        for job in self.to_cancel:
            for c in job.completions:
                if c.finish_reason is None:
                    self.engine.remove(c)
        self.to_cancel = []

    def _admit(self):
        while self.waiting and self.engine.free >= len(self.waiting[0].completions):
            job = self.waiting.popleft()
            for c in job.completions:
                self.engine.add(c)
            self.running.append(job)

    def _fail(self, jobs, error):
        self.engine.clear()
        for job in jobs:
            job.deliver(error)
        self.running = [job for job in self.running if job not in jobs]

    def _deliver(self, events):
        finished = []
        for c, text, reason in events:
            job, index = c.tag
            job.deliver((index, text, reason))
            if reason is not None:
                job.unfinished -= 1
                if job.unfinished == 0:
                    finished.append(job)
        with self.cond:
            self.running = [job for job in self.running if job not in finished]
            self.free = self.engine.free
