// CancelLatency: how long after CancellationTokenSource.Cancel() an awaited StreamAsync returns.
//
//   mcs -langversion:7 -out:/tmp/CancelLatency.exe -r:/tmp/LlamaShm.dll CancelLatency.cs
//   mono /tmp/CancelLatency.exe RUNS PIECES WORKER [WORKER ARGS...]
//
// Each run streams a long answer, cancels after PIECES pieces (on the thread that awaits, not in
// the callback) and measures from Cancel() to the await returning (RequestCanceledException).
// Prints min / median / max in ms; exits 1 if a run was not cancelled.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using LlamaShm;

static class CancelLatency
{
    static int Main(string[] args)
    {
        if (args.Length < 3)
        {
            Console.Error.WriteLine("usage: CancelLatency.exe RUNS PIECES WORKER [WORKER ARGS...]");
            return 2;
        }
        return Run(int.Parse(args[0]), int.Parse(args[1]), args[2], args.Skip(3).ToArray()).GetAwaiter().GetResult();
    }

    static async Task<int> Run(int runs, int pieces, string worker, string[] workerArgs)
    {
        var options = new ClientOptions { WorkerPath = worker, StartupTimeout = TimeSpan.FromSeconds(120) };
        foreach (string a in workerArgs)
            options.WorkerArguments.Add(a);
        const string user = "Write a long story about a lighthouse keeper and a storm, in many chapters.";
        const string system = "You are a storyteller.";
        var ms = new List<double>();
        using (var client = LlamaShmClient.Start(options))
        {
            for (int i = 0; i < runs; i++)
            {
                using (var cts = new CancellationTokenSource())
                {
                    var enough = new TaskCompletionSource<bool>();
                    int n = 0;
                    Task<Response> t = client.StreamAsync(user, system, c => { if (++n == pieces) enough.TrySetResult(true); },
                                                          null, cts.Token);
                    if (await Task.WhenAny(enough.Task, t).ConfigureAwait(false) != enough.Task)
                    {
                        Console.Error.WriteLine("run {0}: the answer ended after {1} pieces, before the cancel", i, n);
                        return 1;
                    }
                    var clock = Stopwatch.StartNew();
                    cts.Cancel();
                    try
                    {
                        await t.ConfigureAwait(false);
                        Console.Error.WriteLine("run {0}: not cancelled", i);
                        return 1;
                    }
                    catch (RequestCanceledException e)
                    {
                        ms.Add(clock.Elapsed.TotalMilliseconds);
                        if (e.PartialResponse == null || e.PartialResponse.Finish != FinishReason.Cancelled)
                            return 1;
                    }
                }
            }
            client.Shutdown();
        }
        ms.Sort();
        double median = ms.Count % 2 == 1 ? ms[ms.Count / 2] : (ms[ms.Count / 2 - 1] + ms[ms.Count / 2]) / 2;
        Console.WriteLine("cancel-to-return over {0} runs (cancel after {1} pieces): min {2:F2} ms, median {3:F2} ms, max {4:F2} ms",
                          runs, pieces, ms[0], median, ms[ms.Count - 1]);
        return 0;
    }
}
