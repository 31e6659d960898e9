/* The C example of frontends/README.md. The lines between the example markers are that README's
 * C block, verbatim, so they are flush left; tests/tests/readme_examples.rs checks that, and
 * compiles and runs this file: hello <path of llama-shm-worker> prints "Be terse.\nHello" and
 * exits 0 if exactly that came back. */
#include <stdio.h>
#include <string.h>

#include "llama_shm.h"

int main(int argc, char **argv) {
    const char *worker = argc > 1 ? argv[1] : NULL; /* NULL: $LLAMA_SHM_WORKER, else next to the library */
// example:begin
const char *args[] = {"--engine", "echo"};
lshm_client *c = NULL;  lshm_response r;
lshm_client_new(worker, args, 2, 0, &c, NULL);
if (lshm_request(c, "Hello", "Be terse.", 0, 0, &r, NULL) == LSHM_OK) puts(r.text);  /* Be terse.\nHello */
int ok = r.text != NULL && strcmp(r.text, "Be terse.\nHello") == 0;
lshm_response_free(&r);  ok = lshm_client_shutdown(c, NULL) == LSHM_OK && ok;
// example:end
    return ok ? 0 : 1;
}
