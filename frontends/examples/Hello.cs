// The C# example of frontends/README.md. The lines between the example markers are that README's
// C# block, verbatim, so they are flush left; tests/tests/readme_examples.rs checks that, and
// compiles (with ../csharp/LlamaCppLinuxClient.cs) and runs this file under Mono:
// Hello.exe <path of llama-shm-worker> prints "Be terse.\nHello" and exits 0 if exactly that came back.
using System;
using LlamaShm;

static class Hello
{
    static int Main(string[] args)
    {
        string worker = args[0];
// example:begin
string answer;
using (var client = new LlamaCppLinuxClient()) {
    client.Initialize(worker, "--engine", "echo");
    answer = client.SendRequest("Hello", "Be terse.");   // "Be terse.\nHello"
    client.Shutdown();
}
Console.WriteLine(answer);
// example:end
        return answer == "Be terse.\nHello" ? 0 : 1;
    }
}
