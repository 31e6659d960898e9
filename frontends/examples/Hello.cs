// The C# example of frontends/README.md and README.md. The lines between the example markers are
// those READMEs' C# block, verbatim, so they are flush left; tests/tests/readme_examples.rs checks
// that, compiles this file against LlamaShm.dll (frontends/csharp/LlamaShm) and runs it under Mono:
// Hello.exe <path of llama-shm-worker> streams "Be terse.\nHello" to the terminal piece by piece
// (the echo worker paced like a model) and exits 0 if exactly that came back; Ctrl+C, or 30 s,
// cancels the answer (exit 130).
using System;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using LlamaShm;

static class Hello
{
    static int Main(string[] args)
    {
        return Run(args[0]).GetAwaiter().GetResult(); // C# 7.0 has no async Main
    }

    static async Task<int> Run(string worker)
    {
// example:begin
var options = new ClientOptions { WorkerPath = worker, WorkerArguments = { "--engine", "echo", "--echo-piece-us", "20000" } };
using (var client = LlamaShmClient.Start(options))
using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
{
    ConsoleCancelEventHandler onCtrlC = (s, e) => { e.Cancel = true; cts.Cancel(); };   // Ctrl+C cancels the answer
    Console.CancelKeyPress += onCtrlC;
    var streamed = new StringBuilder();
    try
    {
        Response r = await client.StreamAsync("Hello", "Be terse.", chunk => { Console.Write(chunk); streamed.Append(chunk); },
                                              null, cts.Token);
        Console.WriteLine($"\n[{r.Finish}: {r.Usage.GeneratedTokens} tokens in {r.Usage.GenerationTime.TotalMilliseconds:F0} ms]");
        return r.Text == "Be terse.\nHello" && streamed.ToString() == r.Text ? 0 : 1;
    }
    catch (RequestCanceledException e)   // an OperationCanceledException
    {
        Console.WriteLine($"\n[cancelled after {e.PartialResponse?.Text.Length ?? 0} characters]");
        return 130;
    }
    finally
    {
        Console.CancelKeyPress -= onCtrlC;   // cts is disposed next: a later Ctrl+C must not reach it
    }
}
// example:end
    }
}
