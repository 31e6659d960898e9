"""The Python example of frontends/README.md. The lines between the example markers are that
README's Python block, verbatim; tests/tests/readme_examples.rs checks that and runs this file
on the source tree, tests/tests/ffi_frontends.rs with the wheel installed. Either of

    python3 frontends/examples/hello.py               # with the wheel installed (pip install)
    PYTHONPATH=frontends/python LLAMA_SHM_WORKER=target/release/llama-shm-worker python3 frontends/examples/hello.py

exits 0 if the echo engine's answers came back exactly."""
import sys

# example:begin
from llama_shm import Client
with Client(args=["--engine", "echo"]) as c:
    r = c.ask("What is 2+2?", system="You are terse.")      # r.text == "You are terse.\nWhat is 2+2?"
    chunks = list(c.stream("stream me, please", system="sys"))
# example:end
print(repr(r.text), chunks)
sys.exit(0 if r.text == "You are terse.\nWhat is 2+2?" and "".join(chunks) == "sys\nstream me, please" else 1)
