"""Models no test contains (BERT-MLM with a mask and labels, T5 with labels, a ConvNeXt-like CNN
with BatchNorm and Dropout2d), checked with meters of their own: gradients, buffers and
state_dict against the unmodified model, and the CPU allocator's peak read from the profiler's
flat kineto `[memory]` events (not through fxckpt.measure), against the plan's budget and
prediction. `check_more` adds the input's gradient, the outputs, a second step (dropout under
the same seed), the floor budget (`min_feasible_budget`), bf16 autocast (cache_enabled=False,
NOTE [ Casts autocast's cache would share ]), and flags a difference, buffers off, the allocator
over the budget, or the prediction (max of plan and dry run) off the allocator by more than 5%.
A fraction refused with InfeasibleBudgetError is tried again at the floor the error names.
Run: `python benchmarks/unseen_models.py [more | extra [names...]]` (the first set about 3 minutes
on 2 cores, `more` about 4: OPT, Mixtral, Falcon, DeBERTa-v2, Swin, Wav2Vec2, and hand-written nets;
`extra` about 6: GPT-NeoX, ViT, ConvNeXt with drop path, ALBERT, Whisper, XLNet, Funnel, CLIP, BART,
MobileNetV2, Reformer (a CaptureError), Mamba, and hand-written nets: FFT token mixing with a
cumprod gate, torch.nn.utils.parametrizations, reductions (max, topk, sort, cummax, amax,
kthvalue, median), a block planned on its own inside a model planned whole, MobileNet blocks,
stochastic depth, dict in / dict and list out, tied embeddings, a model trained in eval(), and
call patterns (`check_calls`): two forwards before one backward, a
no_grad forward, a bf16 autocast step after an fp32 plan, other input shapes)."""
import sys, copy, contextlib, weakref, torch, torch.nn as nn, torch.nn.functional as F, fxckpt
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map_only
from torch.profiler import profile, ProfilerActivity

class Meter(TorchDispatchMode):
    def __init__(self):
        super().__init__(); self.live = {}; self.cur = 0; self.peak = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage(); key = st.data_ptr()
                if key in self.live or st.nbytes() == 0: continue
                self.live[key] = st.nbytes(); self.cur += st.nbytes(); self.peak = max(self.peak, self.cur)
                def fin(k=key, n=st.nbytes()):
                    if self.live.pop(k, None) is not None: self.cur -= n
                weakref.finalize(st, fin)
        return out

def alloc_peak(fn):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    evs = sorted([e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == torch._C._autograd.DeviceType.CPU], key=lambda e: e.start_ns())
    for e in evs:
        cur += e.nbytes(); peak = max(peak, cur)
    return peak

def call(m, inp):
    return m(**inp) if isinstance(inp, dict) else m(*inp)

def step(m, inp, loss_fn, seed):
    for p in m.parameters():
        if p.grad is None: p.grad = torch.zeros_like(p)
        else: p.grad.zero_()
    torch.manual_seed(seed)
    out = call(m, inp); loss = loss_fn(out); loss.backward()
    return loss.detach()

def check(name, make, inp, loss_fn, budgets):
    torch.manual_seed(0); ref = make(); ref.train()
    for b in budgets:
        m0 = copy.deepcopy(ref); m1 = copy.deepcopy(ref)
        try:
            c = fxckpt.auto_checkpoint(m1, inp, budget=b, loss_fn=loss_fn)
        except fxckpt.FxckptError as e:
            print(f"{name} {b}: {type(e).__name__}: {str(e)[:200]}"); continue
        l0 = step(m0, inp, loss_fn, 1); l1 = step(c, inp, loss_fn, 1)
        g = max((p0.grad - p1.grad).abs().max().item() for p0, p1 in zip(m0.parameters(), m1.parameters()))
        bufs = all(torch.equal(a, b_) for a, b_ in zip(m0.buffers(), m1.buffers()))
        sd = all(torch.equal(m0.state_dict()[k], m1.state_dict()[k]) for k in m0.state_dict())
        # allocator-level activation peak: step with grads allocated, minus nothing (grads exist already)
        def run(m):
            def f():
                out = call(m, inp); loss_fn(out).backward()
            return f
        for p in list(m0.parameters()) + list(m1.parameters()): p.grad.zero_()
        a0 = alloc_peak(run(m0)); a1 = alloc_peak(run(c))
        budget_b = getattr(c.plan, "budget_bytes", None)
        pred = c.plan.predicted_peak_bytes
        print(f"{name} budget={b}: loss eq {torch.equal(l0,l1)} grad maxdiff {g:.3g} buffers eq {bufs} state_dict eq {sd} | "
              f"alloc peak orig {a0/2**20:.3f} ckpt {a1/2**20:.3f} MiB; plan budget {budget_b/2**20:.3f} pred {pred/2**20:.3f} baseline {c.plan.baseline_peak_bytes/2**20:.3f} solver {c.plan.solver} gap {c.plan.optimality_gap}", flush=True)

def fresh(inp):
    return tree_map_only(torch.Tensor, lambda t: t.detach().clone().requires_grad_(t.requires_grad), inp)

def maxdiff(a, b):
    if a is None or b is None: return 0.0 if a is None and b is None else float("inf")
    if a.shape != b.shape: return float("inf")
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0

def check_more(name, make, inp, loss_fn=None, budgets=(0.7, "floor"), autocast=False):
    """`check` with more meters (module docstring); `make` is called for each copy (a module
    with old-style weight_norm cannot be deep-copied)."""
    loss_fn = loss_fn or fxckpt.step_loss
    ac = (lambda: torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)) if autocast else contextlib.nullcontext
    name += " bf16" if autocast else ""
    def new():
        torch.manual_seed(0); m = make()
        return m if getattr(m, "keep_mode", False) else m.train()
    def run_step(m, i, seed):
        for p in m.parameters():
            if p.requires_grad: p.grad = torch.zeros_like(p)
        torch.manual_seed(seed)
        with ac():
            out = call(m, i); loss = loss_fn(out)
        loss.backward()
        return [loss.detach()] + [t.detach() for t in tree_flatten(out.to_tuple() if hasattr(out, "to_tuple") else out)[0] if isinstance(t, torch.Tensor)]
    budgets = list(budgets)
    for b in budgets:
        m0, m1, i0, i1 = new(), new(), fresh(inp), fresh(inp)
        try:
            with ac():
                mb = (fxckpt.min_feasible_budget(new(), inp, loss_fn=loss_fn) / 2**20 if b == "floor" else
                      b[1] / 2**20 if isinstance(b, tuple) else None)
                c = fxckpt.auto_checkpoint(m1, i1, budget_mb=mb, budget=None if mb is not None else b, loss_fn=loss_fn)
        except fxckpt.FxckptError as e:
            print(f"{name} {b}: {type(e).__name__}: {str(e)[:160] if not isinstance(e, fxckpt.CaptureError) else e}", flush=True)
            if isinstance(e, fxckpt.InfeasibleBudgetError) and not isinstance(b, tuple):
                budgets.append(("refused, as named", e.min_feasible_bytes))  # the floor the error names must plan and hold
            continue
        diff, bufs = 0.0, True
        for seed in (1, 2):
            o0, o1 = run_step(m0, i0, seed), run_step(c, i1, seed)
            diff = max([diff] + [maxdiff(x, y) for x, y in zip(o0, o1)] + [maxdiff(p.grad, q.grad) for p, q in zip(m0.parameters(), m1.parameters())]
                       + [maxdiff(x.grad, y.grad) for x, y in zip(tree_flatten(i0)[0], tree_flatten(i1)[0]) if isinstance(x, torch.Tensor) and x.requires_grad])
            bufs &= all(torch.equal(x, y) for x, y in zip(m0.buffers(), m1.buffers())) and all(torch.equal(v, m1.state_dict()[k]) for k, v in m0.state_dict().items())
        for t in [p.grad for p in m1.parameters() if p.grad is not None] + [t.grad for t in tree_flatten(i1)[0] if isinstance(t, torch.Tensor) and t.grad is not None]:
            t.zero_()
        def f():
            with ac():
                out = call(c, i1); loss = loss_fn(out)
            loss.backward()
        alloc, plan = alloc_peak(f), c.plan
        pred = max(plan.predicted_peak_bytes, plan.dry_run_peak_bytes or 0)
        flags = [f for f, bad in (("DIFF", diff and not autocast), ("BUFFERS", not bufs), ("OVER", alloc > plan.budget_bytes),
                                  ("PREDICTION", abs(pred - alloc) > 0.05 * alloc)) if bad]
        print(f"{name} budget={b}: max diff {diff:.3g} (loss, outputs, grads, input grads; 2 steps) buffers eq {bufs} | "
              f"allocator {alloc:,} B, budget {plan.budget_bytes:,} B, predicted {pred:,} B ({100 * (pred - alloc) / alloc:+.1f}%) "
              f"{' '.join(flags)}", flush=True)

def more():
    import transformers as T
    from torch.nn.utils import weight_norm
    torch.manual_seed(0)
    V = 300; ids = torch.randint(0, V, (2, 32)); mask = torch.ones(2, 32, dtype=torch.long); mask[1, 24:] = 0
    lm = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=V, max_position_embeddings=64)
    check_more("opt", lambda: T.OPTForCausalLM(T.OPTConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64, dropout=0.1, attention_dropout=0.1)), lm)
    mixtral = lambda: T.MixtralForCausalLM(T.MixtralConfig(**small, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True))
    check_more("mixtral", mixtral, lm, budgets=(0.5,))
    check_more("mixtral", mixtral, lm, budgets=("floor",), autocast=True)
    check_more("falcon", lambda: T.FalconForCausalLM(T.FalconConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, hidden_dropout=0.1, attention_dropout=0.1, new_decoder_architecture=False, multi_query=True, parallel_attn=True, alibi=False)), lm)
    check_more("deberta-v2", lambda: T.DebertaV2ForMaskedLM(T.DebertaV2Config(**small, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=32)), lm, budgets=(0.5,))
    check_more("swin", lambda: T.SwinForImageClassification(T.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=5, drop_path_rate=0.1, hidden_dropout_prob=0.1)),
               {"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.tensor([1, 3])}, budgets=(0.5,), autocast=True)
    w2v = T.Wav2Vec2Config(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                           num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group", mask_time_prob=0.0, layerdrop=0.0, hidden_dropout=0.1)
    check_more("wav2vec2", lambda: T.Wav2Vec2Model(w2v), {"input_values": torch.randn(2, 4000)}, lambda o: o.last_hidden_state.pow(2).mean(), budgets=(1.0, 0.7, "floor"))

    class TCN(nn.Module):
        def __init__(s):
            super().__init__()
            s.convs = nn.ModuleList(weight_norm(nn.Conv1d(16, 16, 3, padding=2 ** i, dilation=2 ** i)) for i in range(4))
            s.drop = nn.Dropout(0.2); s.head = nn.Conv1d(16, 4, 1)
        def forward(s, x):
            for c in s.convs: x = x + s.drop(F.relu(c(x)))
            return s.head(x)
    check_more("tcn-weight-norm", TCN, (torch.randn(4, 16, 256, requires_grad=True),))
    class UNet(nn.Module):
        def __init__(s):
            super().__init__()
            blk = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU())
            s.d1, s.d2, s.mid, s.u2, s.u1, s.out = blk(3, 16), blk(16, 32), blk(32, 32), blk(64, 16), blk(32, 16), nn.Conv2d(16, 3, 1)
        def forward(s, x):
            h1 = s.d1(x); h2 = s.d2(F.max_pool2d(h1, 2)); m = s.mid(F.avg_pool2d(h2, 2))
            u = s.u2(torch.cat([F.interpolate(m, scale_factor=2, mode="nearest"), h2], 1))
            return s.out(s.u1(torch.cat([F.interpolate(u, size=h1.shape[-2:], mode="bilinear", align_corners=False), h1], 1)))
    check_more("groupnorm-unet", UNet, (torch.randn(2, 3, 32, 32),), budgets=(0.7,), autocast=True)
    class Frozen(nn.Module):  # frozen stem and a BatchNorm in eval inside a training model
        keep_mode = True
        def __init__(s):
            super().__init__()
            s.stem, s.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
            s.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
            s.head = nn.Linear(16, 10)
            for p in list(s.stem.parameters()) + list(s.bn.parameters()): p.requires_grad_(False)
            s.train(); s.bn.eval()
        def forward(s, x):
            h = F.relu(s.bn(s.stem(x)))
            return s.head((h + s.body(h)).mean((2, 3)))
    check_more("frozen-bn-eval", Frozen, (torch.randn(4, 3, 16, 16, requires_grad=True),), budgets=(1.0, "floor"))
    class Views(nn.Module):  # in-place ops on views, a boolean-mask assignment, where/masked_fill, a dict output
        def __init__(s):
            super().__init__(); s.a, s.b = nn.Linear(32, 32), nn.Linear(32, 32)
        def forward(s, x, mask):
            h = s.a(x); h[:, :4] *= 2; h[:, 4:8].add_(1.0); h.view(-1, 8, 4).mul_(0.5)
            h2 = s.b(torch.where(h > 0, h, 0.1 * h).masked_fill(mask, float("-inf")).softmax(-1)).relu() * 1.0
            h2[h2 > 0.1] = 0.1
            return {"y": h2, "aux": [h2.mean()]}
    check_more("in-place-views", Views, (torch.randn(16, 32, requires_grad=True), torch.rand(16, 32) > 0.3), lambda o: o["y"].sum() + o["aux"][0], budgets=(1.0, "floor"))
    class Bag(nn.Module):
        def __init__(s):
            super().__init__(); s.bag = nn.EmbeddingBag(200, 32, mode="sum")
            s.mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 1))
        def forward(s, ids, use_norm: bool = True, repeat: int = 2):
            h = s.bag(ids)
            for _ in range(repeat): h = F.layer_norm(h, h.shape[-1:]) if use_norm else h
            return s.mlp(h)
    check_more("embedding-bag-kwargs", Bag, {"ids": torch.randint(0, 200, (8, 6)), "use_norm": True, "repeat": 2}, budgets=(1.0, "floor"))

def check_calls(name, make, inp, other, loss_fn=None, budget=0.6):
    """Call patterns on one planned module against the unmodified model: two forwards (inp, then
    `other`) before one backward, a `torch.no_grad()` forward, a bf16 autocast step after planning
    in fp32, a step at `other`'s shapes; each compares loss, outputs and gradients and, for the
    single steps, the allocator against the budget of the plan that ran."""
    loss_fn = loss_fn or fxckpt.step_loss
    def new():
        torch.manual_seed(0); return make().train()
    def grads(m, i):
        return [p.grad for p in m.parameters()] + [t.grad for t in tree_flatten(i)[0] if isinstance(t, torch.Tensor) and t.requires_grad]
    def outs(o):
        return [t.detach() for t in tree_flatten(o.to_tuple() if hasattr(o, "to_tuple") else o)[0] if isinstance(t, torch.Tensor)]
    m0, m1 = new(), new()
    c = fxckpt.auto_checkpoint(m1, fresh(inp), budget=budget, loss_fn=loss_fn)
    def zero(m):
        for p in m.parameters():
            if p.requires_grad: p.grad = torch.zeros_like(p)
    def two_forwards(m, i, j):
        zero(m); torch.manual_seed(3)
        a = call(m, i); b = call(m, j); loss = loss_fn(a) + loss_fn(b); loss.backward()
        return [loss.detach()] + outs(a) + outs(b)
    def one(m, i, ctx=contextlib.nullcontext, grad=True):
        zero(m); torch.manual_seed(4)
        with ctx():
            o = call(m, i)
        if not grad:
            return outs(o)
        with ctx():
            loss = loss_fn(o)
        loss.backward()
        return [loss.detach()] + outs(o)
    ac = lambda: torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)
    cases = [("two forwards, one backward", lambda m, i, j: two_forwards(m, i, j), True),
             ("no_grad forward", lambda m, i, j: one(m, i, torch.no_grad, False), False),
             ("bf16 autocast after fp32 plan", lambda m, i, j: one(m, i, ac), True),
             ("other shapes", lambda m, i, j: one(m, j), True)]
    for what, fn, measure in cases:
        i0, j0, i1, j1 = fresh(inp), fresh(other), fresh(inp), fresh(other)
        try:
            o0, o1 = fn(m0, i0, j0), fn(c, i1, j1)
        except Exception as e:
            print(f"{name} {what}: {type(e).__name__}: {str(e)[:300]}", flush=True); continue
        diff = max([maxdiff(x, y) for x, y in zip(o0, o1)] + [maxdiff(x, y) for x, y in zip(grads(m0, i0) + grads(m0, j0), grads(m1, i1) + grads(m1, j1))])
        line = f"{name} {what}: max diff {diff:.3g}"
        if measure and what != "two forwards, one backward":
            i2 = fresh(inp if what != "other shapes" else other)
            ctx = ac if "autocast" in what else contextlib.nullcontext
            zero(m1)
            def f():
                with ctx():
                    out = call(c, i2); loss = loss_fn(out)
                loss.backward()
            alloc, plan = alloc_peak(f), c.plan
            pred = max(plan.predicted_peak_bytes, plan.dry_run_peak_bytes or 0)
            flags = [f for f, bad in (("OVER", alloc > plan.budget_bytes), ("PREDICTION", abs(pred - alloc) > 0.05 * alloc)) if bad]
            line += f" | allocator {alloc:,} B, budget {plan.budget_bytes:,} B, predicted {pred:,} B ({100 * (pred - alloc) / alloc:+.1f}%) {' '.join(flags)}"
        if diff and "autocast" not in what: line += " DIFF"
        print(line, flush=True)

def extra():
    import transformers as T
    torch.manual_seed(0)
    V = 300; ids = torch.randint(0, V, (2, 32)); mask = torch.ones(2, 32, dtype=torch.long); mask[1, 24:] = 0
    lm = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    only = sys.argv[2:]
    want = lambda n: not only or n in only
    if want("neox"):
        check_more("gpt-neox", lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                   rotary_pct=0.25, use_parallel_residual=True, hidden_dropout=0.1, attention_dropout=0.1)), lm, budgets=(0.5, "floor"))
    if want("vit"):
        check_more("vit", lambda: T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_labels=5,
                   hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)), {"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.tensor([1, 3])}, budgets=(0.6,), autocast=True)
    if want("convnext"):
        check_more("convnext-droppath", lambda: T.ConvNextForImageClassification(T.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[2, 2], drop_path_rate=0.3, image_size=32, num_labels=5)),
                   {"pixel_values": torch.randn(4, 3, 32, 32), "labels": torch.tensor([1, 3, 0, 2])}, budgets=(0.5, "floor"))
    if want("albert"):
        check_more("albert-shared", lambda: T.AlbertForMaskedLM(T.AlbertConfig(vocab_size=V, embedding_size=32, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                   max_position_embeddings=64, hidden_dropout_prob=0.1)), lm, budgets=(0.5, "floor"))
    if want("whisper"):
        wcfg = T.WhisperConfig(vocab_size=V, num_mel_bins=16, encoder_layers=1, decoder_layers=1, d_model=64, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                               decoder_ffn_dim=128, max_source_positions=32, max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, dropout=0.1)
        check_more("whisper", lambda: T.WhisperForConditionalGeneration(wcfg), {"input_features": torch.randn(2, 16, 64), "labels": ids[:, :16].clamp(min=3)}, budgets=(0.5, "floor"))
    if want("xlnet"):
        check_more("xlnet", lambda: T.XLNetLMHeadModel(T.XLNetConfig(vocab_size=V, d_model=64, n_layer=2, n_head=4, d_inner=128, dropout=0.1)), {"input_ids": ids, "labels": ids}, budgets=(0.5,))
    if want("funnel"):
        check_more("funnel", lambda: T.FunnelForMaskedLM(T.FunnelConfig(vocab_size=V, d_model=64, n_head=4, d_head=16, d_inner=128, block_sizes=[1, 1], num_decoder_layers=1)), lm, budgets=(0.5,))
    if want("clip"):  # two encoders, a dict of inputs, a contrastive loss
        clip = T.CLIPConfig(text_config=dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=32),
                            vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64), projection_dim=16)
        check_more("clip", lambda: T.CLIPModel(clip), {"input_ids": ids[:, :16], "attention_mask": mask[:, :16], "pixel_values": torch.randn(2, 3, 32, 32), "return_loss": True}, budgets=(0.6, "floor"))
    if want("bart"):
        check_more("bart", lambda: T.BartForConditionalGeneration(T.BartConfig(vocab_size=V, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
                   encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.1)), lm, budgets=(0.5, "floor"), autocast=True)
    if want("mobilenetv2"):
        check_more("mobilenetv2-hf", lambda: T.MobileNetV2ForImageClassification(T.MobileNetV2Config(image_size=32, depth_multiplier=0.35, num_labels=5, classifier_dropout_prob=0.1)),
                   {"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.tensor([1, 3])}, budgets=(0.5, "floor"))
    if want("reformer"):  # reversible layers: a custom autograd Function
        try:
            check_more("reformer", lambda: T.ReformerModelWithLMHead(T.ReformerConfig(vocab_size=V, hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=64,
                       attn_layers=["local", "local"], axial_pos_embds=False, max_position_embeddings=64, local_attn_chunk_length=16, is_decoder=True)), {"input_ids": ids, "labels": ids}, budgets=(0.5,))
        except Exception as e:
            print(f"reformer: {type(e).__name__}: {e}")
    if want("mamba"):
        check_more("mamba", lambda: T.MambaForCausalLM(T.MambaConfig(vocab_size=V, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4)), {"input_ids": ids[:, :16], "labels": ids[:, :16]}, budgets=(0.5, "floor"))

    class FFTMix(nn.Module):  # FFT token mixing, a cumprod gate, gather + scatter_add, einsum, dropout, BatchNorm
        def __init__(s, d=32):
            super().__init__()
            s.inp = nn.Linear(16, d); s.bn = nn.BatchNorm1d(d); s.gate = nn.Linear(d, d); s.w = nn.Parameter(torch.randn(d, d) / d ** 0.5)
            s.drop = nn.Dropout(0.1); s.out = nn.Linear(d, 8)
        def forward(s, x, idx):
            h = s.bn(s.inp(x).transpose(1, 2)).transpose(1, 2)
            f = torch.fft.rfft(h, dim=1)
            h = h + torch.fft.irfft(f * f.abs().clamp(max=1.0), n=h.shape[1], dim=1)
            h = h * torch.sigmoid(s.gate(h)).cumprod(dim=1)
            picked = torch.gather(h, 1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
            h = torch.zeros_like(h).scatter_add(1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]), picked) + h
            return s.out(F.gelu(torch.einsum("btd,de->bte", s.drop(h), s.w)))
    if want("fft"):
        fft_in = (torch.randn(4, 32, 16, requires_grad=True), torch.randint(0, 32, (4, 8)))
        check_more("fft-mix", FFTMix, fft_in, budgets=(1.0, 0.8, "floor"))
        check_more("fft-mix", FFTMix, fft_in, budgets=(0.8, "floor"), autocast=True)

    class Param(nn.Module):  # torch.nn.utils.parametrizations: weight norm, spectral norm (power iteration buffers), orthogonal (matrix_exp)
        def __init__(s):
            super().__init__()
            from torch.nn.utils import parametrizations as P
            s.a, s.b = P.weight_norm(nn.Linear(32, 64)), P.spectral_norm(nn.Linear(64, 64))
            s.c, s.d = P.orthogonal(nn.Linear(64, 64)), P.orthogonal(nn.Linear(64, 32))  # matrix_exp, householder
            s.e = nn.Linear(32, 4)
        def forward(s, x):
            return s.e(s.d(torch.tanh(s.c(F.gelu(s.b(torch.relu(s.a(x))))))))
    if want("param"):
        check_more("parametrizations", Param, (torch.randn(16, 32, requires_grad=True),), budgets=(1.0, "floor"))
    class Reduce(nn.Module):  # value-selecting reductions and amax over features and tokens
        def __init__(s):
            super().__init__(); s.a, s.b = nn.Linear(32, 64), nn.Linear(64 + 8 + 64 + 64, 4)
        def forward(s, x):
            h = torch.tanh(s.a(x))
            feats = [h.max(dim=1).values, h.topk(8, dim=-1).values.mean(1), h.sort(dim=1).values[:, 0], h.cummax(1).values.amax(1)]
            return s.b(torch.cat(feats, -1) - h.kthvalue(2, dim=1).values.median(dim=-1, keepdim=True).values)
    if want("reduce"):
        check_more("reductions", Reduce, (torch.randn(8, 16, 32, requires_grad=True),), budgets=(1.0, 0.8, "floor"))
    class WithBlock(nn.Module):  # a block planned on its own, inside a model planned whole
        def __init__(s):
            super().__init__(); s.pre, s.post = nn.Linear(32, 64), nn.Linear(64, 4)
            s.block = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Dropout(0.1), nn.Linear(128, 64), nn.LayerNorm(64))
            s.block = fxckpt.auto_checkpoint(s.block, torch.randn(16, 64), budget=0.95)
        def forward(s, x):
            return s.post(s.block(torch.relu(s.pre(x))))
    if want("nested"):
        check_more("planned-block-inside", WithBlock, (torch.randn(16, 32, requires_grad=True),), budgets=(0.9, "floor"))

    class MobileNet(nn.Module):  # inverted residuals: 1x1 expand, depthwise 3x3, 1x1 project; BatchNorm, ReLU6
        def __init__(s):
            super().__init__()
            ir = lambda c, e, st: nn.Sequential(nn.Conv2d(c, c * e, 1, bias=False), nn.BatchNorm2d(c * e), nn.ReLU6(inplace=True),
                                                nn.Conv2d(c * e, c * e, 3, st, 1, groups=c * e, bias=False), nn.BatchNorm2d(c * e), nn.ReLU6(inplace=True),
                                                nn.Conv2d(c * e, c, 1, bias=False), nn.BatchNorm2d(c))
            s.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True))
            s.blocks = nn.ModuleList([ir(16, 4, 1), ir(16, 4, 1), ir(16, 6, 1)]); s.head = nn.Linear(16, 10)
        def forward(s, x):
            h = s.stem(x)
            for b in s.blocks: h = h + b(h)
            return s.head(F.adaptive_avg_pool2d(h, 1).flatten(1))
    if want("mobilenet"):
        check_more("mobilenet", MobileNet, (torch.randn(4, 3, 32, 32, requires_grad=True),), budgets=(0.6, "floor"))
        check_more("mobilenet", MobileNet, (torch.randn(4, 3, 32, 32),), budgets=(0.6,), autocast=True)
    class DropPath(nn.Module):  # stochastic depth, a random keep per sample
        def __init__(s):
            super().__init__()
            s.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(16, 16, 7, padding=3, groups=16), nn.GroupNorm(1, 16), nn.Conv2d(16, 64, 1), nn.GELU(), nn.Conv2d(64, 16, 1)) for _ in range(3))
            s.stem = nn.Conv2d(3, 16, 4, 4); s.head = nn.Linear(16, 5)
        def forward(s, x):
            h = s.stem(x)
            for b in s.blocks:
                keep = torch.rand(h.shape[0], 1, 1, 1, dtype=h.dtype, device=h.device).add_(0.7).floor_()
                h = h + b(h).div(0.7) * keep
            return s.head(h.mean((2, 3)))
    if want("droppath"):
        check_more("droppath", DropPath, (torch.randn(4, 3, 32, 32),), budgets=(0.5, "floor"))
    class DictIO(nn.Module):  # a dict of inputs, a dict holding a list out
        def __init__(s):
            super().__init__(); s.img = nn.Linear(24, 32); s.txt = nn.Embedding(50, 32); s.fuse = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Dropout(0.2), nn.Linear(64, 32))
        def forward(s, batch):
            a = s.img(batch["image"]); t = s.txt(batch["tokens"]).mean(1)
            h = s.fuse(torch.cat([a, t], -1))
            return {"emb": h, "parts": [a.tanh(), t.sigmoid()], "n": batch["tokens"].shape[1]}
    dict_loss = lambda o: o["emb"].pow(2).sum() + o["parts"][0].sum() + o["parts"][1].mean()
    if want("dict"):
        check_more("dict-io", DictIO, ({"image": torch.randn(8, 24, requires_grad=True), "tokens": torch.randint(0, 50, (8, 5))},), dict_loss, budgets=(0.6, "floor"))
    class Tied(nn.Module):  # one weight in two places: embedding and output projection
        def __init__(s):
            super().__init__(); s.emb = nn.Embedding(100, 32); s.blk = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True); s.ln = nn.LayerNorm(32)
        def forward(s, ids):
            return F.linear(s.ln(s.blk(s.emb(ids))), s.emb.weight)
    tied_loss = lambda o: F.cross_entropy(o.flatten(0, 1), torch.arange(o.shape[0] * o.shape[1]) % 100)
    if want("tied"):
        check_more("tied", Tied, (torch.randint(0, 100, (4, 16)),), tied_loss, budgets=(0.6, "floor"))
    class Eval(MobileNet):  # handed over and trained in eval(): BatchNorm uses running stats, no dropout
        keep_mode = True
        def __init__(s):
            super().__init__(); s.drop = nn.Dropout(0.3); s.eval()
        def forward(s, x):
            h = s.stem(x)
            for b in s.blocks: h = h + b(h)
            return s.head(s.drop(F.adaptive_avg_pool2d(h, 1).flatten(1)))
    if want("eval"):
        check_more("eval-mode", Eval, (torch.randn(4, 3, 32, 32, requires_grad=True),), budgets=(0.6, "floor"))
    if want("calls"):
        check_calls("mobilenet", MobileNet, (torch.randn(4, 3, 32, 32, requires_grad=True),), (torch.randn(2, 3, 32, 32, requires_grad=True),))
        check_calls("tied", Tied, (torch.randint(0, 100, (4, 16)),), (torch.randint(0, 100, (3, 8)),), tied_loss)
        check_calls("dict-io", DictIO, ({"image": torch.randn(8, 24, requires_grad=True), "tokens": torch.randint(0, 50, (8, 5))},),
                    ({"image": torch.randn(3, 24, requires_grad=True), "tokens": torch.randint(0, 50, (3, 7))},), dict_loss, budget=1.0)
        check_calls("gpt-neox", lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                    rotary_pct=0.25, hidden_dropout=0.1)), lm, {"input_ids": ids[:1, :20], "labels": ids[:1, :20]})

if __name__ == "__main__" and sys.argv[1:2] == ["extra"]:
    extra()
elif __name__ == "__main__" and sys.argv[1:] == ["more"]:
    more()
elif __name__ == "__main__":
    from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration
    torch.manual_seed(0)
    ids = torch.randint(0, 500, (4, 64)); mask = torch.ones(4, 64, dtype=torch.long); mask[:, 50:] = 0
    bert = lambda: BertForMaskedLM(BertConfig(vocab_size=500, hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256, max_position_embeddings=128))
    check("bert-mlm", bert, {"input_ids": ids, "attention_mask": mask, "labels": ids}, lambda o: o.loss, [0.7, 0.4])
    t5 = lambda: T5ForConditionalGeneration(T5Config(vocab_size=500, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4, decoder_start_token_id=0))
    check("t5", t5, {"input_ids": ids, "labels": ids[:, :32].contiguous()}, lambda o: o.loss, [0.7, 0.4])
    class CNN(nn.Module):
        def __init__(s):
            super().__init__()
            s.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.Hardswish())
            s.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(32, 32, 7, padding=3, groups=32), nn.BatchNorm2d(32), nn.Conv2d(32, 128, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(128, 32, 1)) for _ in range(4))
            s.head = nn.Linear(32, 10)
        def forward(s, x, y):
            h = s.stem(x)
            for b in s.blocks: h = h + b(h)
            return F.cross_entropy(s.head(F.adaptive_avg_pool2d(h, 1).flatten(1)), y)
    x = torch.randn(8, 3, 64, 64); y = torch.randint(0, 10, (8,))
    check("convnext-ish", CNN, (x, y), lambda o: o, [0.7, 0.4])
