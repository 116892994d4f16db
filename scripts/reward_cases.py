#!/usr/bin/env python3
"""Generate adversarial reward test cases as JSONL: {"id", "response", "ground_truth", "problem"}.

    python scripts/reward_cases.py --n 3000 --seed 0 --output cases.jsonl [--reward spatial|r1v]
    python scripts/reward_cases.py --n 8000 --seed 0 --typical 8 --output typical.jsonl

Covers well-formed responses with 0-12 objects (jittered, shuffled, duplicated boxes that make the
assignment tie), and the edges where Python semantics matter: malformed / repeated / reordered tags,
Unicode whitespace and digits, NaN / Infinity, bool and huge-int boxes, duplicate JSON keys,
inverted and degenerate boxes, float overflow, odd ground truths (empty, no scene, wrong types)
and odd `Image size` lines (missing, zero, signs, underscores, non-ASCII digits, huge).
"""
import argparse
import json
import random

LABELS = ["man", "woman", "bike", "car", "dog", "traffic_light", "chair", "table", "Tree", "fire-hydrant",
          "cup", "person", "bus", "sign"]
PREDICATES = ["behind", "left of", "on", "near", "in front of", "holding"]
OPTIONS = ["(A) in front of", "(B) behind", "(C) left of", "(D) right of"]
UNI_WS = ["\u3000", "\u00a0", "\u2003", "\u1680", "\u001c", "\u001f", "\u0085", "\u200b", "\ufeff", "\t\n"]
UNI_DIGITS = ["\u0663", "\u096a", "\uff15", "\U0001d7d9", "\u0e52", "\u00b2"]


def rand_box(r, w, h):
    x1, y1 = r.randint(0, w - 2), r.randint(0, h - 2)
    return [x1, y1, r.randint(x1 + 1, w), r.randint(y1 + 1, h)]


def make_gt(r, w, h, n_obj=None, n_rel=None):
    n_obj = r.randint(1, 8) if n_obj is None else n_obj
    counts, objs = {}, []
    for _ in range(n_obj):
        lab = r.choice(LABELS)
        counts[lab] = counts.get(lab, 0) + 1
        objs.append({"id": f"{lab}.{counts[lab]}", "bbox": rand_box(r, w, h)})
    n_rel = r.randint(0, 3) if n_rel is None else n_rel
    rels = []
    if len(objs) >= 2:
        for _ in range(n_rel):
            a, b = r.sample(objs, 2)
            rels.append({"subject": a["id"], "predicate": r.choice(PREDICATES), "object": b["id"]})
    return {"objects": objs, "relationships": rels}


def jitter(r, box, amount):
    return [v + r.randint(-amount, amount) for v in box]


def pred_from_gt(r, gt, w, h):
    objs = []
    for o in gt["objects"]:
        mode = r.random()
        if mode < 0.1:
            continue  # dropped
        box = list(o["bbox"])
        if mode < 0.7:
            box = jitter(r, box, r.choice([1, 5, 30, 200]))
        elif mode < 0.8:
            box = [box[2], box[3], box[0], box[1]]  # inverted
        elif mode < 0.85:
            box = [float(v) + r.random() for v in box]
        oid = o["id"]
        if r.random() < 0.1:
            oid = r.choice(LABELS) + "." + str(r.randint(1, 3))
        objs.append({"id": oid, "bbox": box})
    for _ in range(r.choice([0, 0, 0, 1, 2, 4])):
        objs.append({"id": f"{r.choice(LABELS)}.{r.randint(5, 99)}", "bbox": rand_box(r, w, h)})
    if r.random() < 0.15 and objs:  # identical duplicates with distinct ids: assignment ties
        o = r.choice(objs)
        lab = o["id"].split(".")[0]
        objs.append({"id": f"{lab}.{r.randint(100, 200)}", "bbox": list(o["bbox"])})
    r.shuffle(objs)
    rels = [dict(x) for x in gt["relationships"]]
    if r.random() < 0.3:
        rels = rels[: r.randint(0, len(rels))]
    return {"objects": objs, "relationships": rels}


def response(r, scene_text, answer, order=None, observe="The image shows things.", think="Reasoning."):
    parts = {
        "observe": f"<observe>{observe}</observe>",
        "think": f"<think>{think}</think>",
        "scene": f"<scene>{scene_text}</scene>",
        "answer": f"<answer>{answer}</answer>",
    }
    order = order or ["observe", "scene", "think", "answer"]
    sep = r.choice(["\n", "\n\n", " ", ""])
    return sep.join(parts[k] for k in order)


def dumps(r, scene):
    return json.dumps(scene, indent=r.choice([None, None, 2]))


def problem_for(w, h):
    return (f"You are given an image. Image size: ({w} x {h}).\n"
            "Answer in <observe>, <think>, <scene>, <answer> tags.\nQ. Where is the man relative to the bike?")


def gt_text(scene_text, answer):
    return f"<scene>{scene_text}</scene>\n<answer>{answer}</answer>"


# ---------- mutations of the predicted scene text ----------
def mutate_scene_text(r, scene, w, h):
    k = r.randrange(30)
    objs = scene["objects"]
    if k == 0:
        return dumps(r, scene).replace("]", "],", 1)  # trailing comma somewhere
    if k == 1 and objs:
        objs[0]["bbox"][r.randrange(4)] = r.choice(["NaN", "Infinity", "-Infinity"])
        return dumps(r, scene).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity").replace('"-Infinity"', "-Infinity")
    if k == 2 and objs:
        objs[0]["bbox"][r.randrange(4)] = r.choice([True, False])
    if k == 3 and objs:
        objs[0]["bbox"][r.randrange(4)] = r.choice([10 ** 20, 10 ** 400, -(10 ** 30), 2 ** 63, 2 ** 63 - 1])
    if k == 4 and objs:
        o = objs[0]
        txt = dumps(r, scene)
        return txt.replace(f'"id": "{o["id"]}"', f'"id": "{o["id"]}", "id": "{r.choice(LABELS)}.1"', 1)
    if k == 5:
        txt = dumps(r, scene)
        return '{"objects": [], ' + txt[1:] if r.random() < 0.5 else txt[:-1] + ', "objects": 5}'
    if k == 6 and objs:
        objs[0]["label"] = "x"
    if k == 7 and objs:
        objs[0]["id"] = r.choice(["traffic light.1", "man.1a", "man1", ".1", "man.", "man.\u0663", "man.\uff11",
                                  "Man_.2", "_.0", "man..1", "man.1 ", "m\u00e4n.1", "man.\u00b2", "MAN.1"])
    if k == 8 and objs:
        objs[0]["bbox"] = objs[0]["bbox"][: r.choice([0, 3])] + ([1] if r.random() < 0.3 else [])
    if k == 9 and objs:
        objs[0]["bbox"] = r.choice([None, "1,2,3,4", {"x": 1}, [1, 2, "3", 4], [1, 2, None, 4], [[1], 2, 3, 4]])
    if k == 10:
        scene["objects"] = r.choice([None, {}, "objects", 3, {"a": 1}])
    if k == 11:
        scene["relationships"] = r.choice([None, {}, "rels", 0, [], [{"subject": "man.1"}]])
    if k == 12 and scene["relationships"]:
        rel = scene["relationships"][0]
        choice = r.randrange(5)
        if choice == 0:
            rel["extra"] = 1
        elif choice == 1:
            rel["predicate"] = 3
        elif choice == 2:
            rel["subject"] = "dog.9"
        elif choice == 3:
            rel["object"] = "not an id"
        else:
            del rel["predicate"]
    if k == 13 and objs:
        objs.append(dict(objs[0]))  # duplicate id
    if k == 14:
        return "{" + '"objects": [' * 3 + "]" * 3 + "}"
    if k == 15:
        return r.choice(["{}", "[]", "null", "", "{'objects': []}", "{\"objects\": []} // c", "\ufeff{}",
                         '{"a": 1}', '{"objects": [], "relationships": []}', "{\"objects\": []}}",
                         "[" * 2000 + "]" * 2000, '{"o": ' + "[" * 500 + "]" * 500 + "}", "1" * 5000,
                         '{"objects": [], "n": ' + "1" * 4301 + "}", '{"objects": [], "n": ' + "1" * 4300 + "}",
                         '{"objects": [], "s": "\\ud83d\\ude00\\u00e9\\n\\/"}', '{"objects": [], "s": "\t"}',
                         '{"objects": [], "s": "\\x41"}', '{"objects": [], "n": -0.0, "m": 1E+2}',
                         '{"objects": [], "n": 01}', '{"objects": [], "n": 1.}', '{"objects": [], "n": -}'])
    if k == 16 and objs:
        v = r.choice([1e308, -1e308, 1.7976931348623157e308, 1e200, 1e155, 1e-320, 5e-324])
        objs[0]["bbox"][r.randrange(4)] = v
    if k == 17 and objs:
        x = r.randint(0, w)
        objs[0]["bbox"] = [x, objs[0]["bbox"][1], x, objs[0]["bbox"][3]]  # zero width
    if k == 18 and objs:
        objs[0]["bbox"] = [0, 0, 0, 0]
    if k == 19:
        return r.choice(UNI_WS) + dumps(r, scene) + r.choice(UNI_WS)
    if k == 20 and objs:
        objs[0]["bbox"] = [-v for v in objs[0]["bbox"]]
    if k == 21:
        return dumps(r, scene).replace(": ", ":\t").replace(", ", ",\r\n ")
    if k == 22 and objs:
        objs[0]["bbox"] = [float(v) for v in objs[0]["bbox"]]
        return dumps(r, scene).replace(".0", "e0", 1)
    return dumps(r, scene)


def mutate_response(r, resp, answer):
    k = r.randrange(16)
    if k == 0:
        tag = r.choice(["observe", "think", "scene", "answer"])
        return resp.replace(f"<{tag}>", "", 1)
    if k == 1:
        tag = r.choice(["observe", "think", "scene", "answer"])
        return resp.replace(f"</{tag}>", "", 1)
    if k == 2:
        tag = r.choice(["observe", "think", "scene", "answer"])
        return resp + f"<{tag}>again</{tag}>"
    if k == 3:
        return resp.replace("Reasoning.", "I will write <answer> later.")
    if k == 4:
        return resp.replace("Reasoning.", "I think </answer> and </scene> appear.")
    if k == 5:
        return resp[: r.randint(0, len(resp))]  # truncated
    if k == 6:
        return resp.replace("<answer>", "<ANSWER>")
    if k == 7:
        return resp + r.choice(["\n", " trailing", "</answer>", "<answer>x</answer>"])
    if k == 8:
        return r.choice(["", " ", "<answer>(B) behind</answer>", "garbage", "<think></think><answer></answer>"])
    if k == 9:
        return resp.replace("The image shows things.", "multi\nline\nobserve")
    return resp


def answer_variant(r, gt_answer):
    k = r.randrange(14)
    if k < 5:
        return gt_answer
    if k == 5:
        return gt_answer.upper()
    if k == 6:
        return r.choice(UNI_WS) + gt_answer + r.choice(UNI_WS)
    if k == 7:
        return gt_answer.replace(" ", "  ")
    if k == 8:
        return gt_answer[:3]
    if k == 9:
        return gt_answer.split(") ", 1)[-1]
    if k == 10:
        return gt_answer + "."
    if k == 11:
        return r.choice(OPTIONS)
    if k == 12:
        return "\n" + gt_answer + "\n"
    return gt_answer.lower()


def mutate_gt(r, gt, w, h):
    k = r.randrange(40)
    objs = gt["objects"]
    if k == 0:
        gt["relationships"] = r.choice(["abc", 5, True, {"a": 1, "b": 2}, None, 0, "", 2.5, [], {}])
    if k == 1:
        gt["objects"] = r.choice([None, [], {}, "x", 0])
    if k == 2 and objs:
        o = r.choice(objs)
        o.pop(r.choice(["id", "bbox"]))
    if k == 3 and objs:
        objs[0]["bbox"] = r.choice([[1, 2, 3], [1, 2, 3, 4, 5], ["1", 2, 3, 4], "abcd", None, [True, 0, 1, 1],
                                    [10 ** 400, 0, 1, 1], [1.5, 2, 3e308, 4], {"0": 1}])
    if k == 4 and objs:
        objs[0]["id"] = r.choice([5, None, ["man.1"], "İstanbul.1", "ΣΑΣ.1", "Man_1", "  man.1 ", "K\u212a.1"])
    if k == 5 and gt["relationships"]:
        rel = gt["relationships"][0]
        choice = r.randrange(4)
        if choice == 0:
            rel.pop("predicate")
        elif choice == 1:
            rel["predicate"] = 7
        elif choice == 2:
            rel.pop(r.choice(["subject", "object"]))
        else:
            rel["subject"] = 1
    if k == 6:
        gt["objects"] = []
    if k == 7 and objs:
        objs.append("not a dict")
    if k == 8:
        gt["relationships"] = [r.choice([1, "x", None, ["a"]])]
    return gt


def problem_variant(r, w, h):
    k = r.randrange(30)
    if k == 0:
        return "No size here."
    if k == 1:
        return problem_for(r.choice(["0", "-0", "000"]), h)
    if k == 2:
        return problem_for(f" +{w} ", f"0{h}")
    if k == 3:
        return problem_for("8_00", "6__00")
    if k == 4:
        return problem_for("\u0668\u0660\u0660", "\uff16\uff10\uff10")
    if k == 5:
        return problem_for(str(10 ** 400), h)
    if k == 6:
        return problem_for(f"{w}.0", h)
    if k == 7:
        return problem_for(w, f"{h} x 3")
    if k == 8:
        return problem_for(f"-{w}", h)
    if k == 9:
        return f"Image size: ({w}\n x {h})"
    if k == 10:
        return problem_for(w, h) + "\nImage size: (1 x 1)"
    if k == 11:
        return problem_for(str(10 ** 300), str(10 ** 300))
    if k == 12:
        return problem_for("1" * 5000, h)
    if k == 13:
        return problem_for(f"\u3000{w}\u001c", f"{h}_0")
    if k == 14:
        return problem_for("", h)
    return problem_for(w, h)


def golden(r):
    """The cases of the spec's golden table, plus the ZeroDivision / overflow corner cases."""
    w, h = 800, 600
    gt = {"objects": [{"id": "bike.1", "bbox": [0, 272, 310, 551]}, {"id": "man.1", "bbox": [0, 165, 38, 278]}],
          "relationships": [{"subject": "man.1", "predicate": "behind", "object": "bike.1"}]}
    g = gt_text(json.dumps(gt), "(B) behind")
    p = problem_for(w, h)
    out = [(response(r, json.dumps(gt), a), g, p) for a in ["(B) behind", "(b) BEHIND", "B", "behind", "(A) in front of"]]
    tiny = {"objects": [{"id": "a.1", "bbox": [0, 1e-7, 1, 0]}], "relationships": []}
    out.append((response(r, json.dumps(tiny), "(B) behind"), g, problem_for(1, 1)))
    out.append((response(r, json.dumps(tiny), "(B) behind"), gt_text(json.dumps(tiny), "(B) behind"), problem_for(1, 1)))
    big = {"objects": [{"id": "a.1", "bbox": [-1e200, 0, 1e200, 1]}], "relationships": []}
    out.append((response(r, json.dumps(big), "(B) behind"), g, problem_for(1, 1)))
    zero = {"objects": [], "relationships": []}
    out.append((response(r, json.dumps(zero), "(B) behind"), gt_text(json.dumps(zero), "(B) behind"), problem_for(0, 0)))
    out.append((response(r, json.dumps(gt), "(B) behind"), g, problem_for(0, 600)))
    return out


def spatial_case(r):
    w, h = r.choice([(800, 600), (640, 480), (1024, 768), (100, 100), (1, 1), (3000, 2000)])
    gt = make_gt(r, max(w, 4), max(h, 4), n_obj=r.choice([0, 1, 2, 3, 5, 8, 12]))
    gt_answer = r.choice(OPTIONS)
    pred = pred_from_gt(r, gt, max(w, 4), max(h, 4))
    gt_scene = json.loads(json.dumps(gt))
    if r.random() < 0.2:
        gt_scene = mutate_gt(r, gt_scene, w, h)
    gtt = gt_text(json.dumps(gt_scene), gt_answer)
    if r.random() < 0.03:
        gtt = r.choice(["", "<answer>(B) behind</answer>", f"<scene>{json.dumps(gt_scene)}</scene>"])
    scene_text = mutate_scene_text(r, pred, w, h) if r.random() < 0.5 else dumps(r, pred)
    order = None
    if r.random() < 0.1:
        order = ["observe", "think", "scene", "answer"]
        r.shuffle(order)
    resp = response(r, scene_text, answer_variant(r, gt_answer), order)
    if r.random() < 0.2:
        resp = mutate_response(r, resp, gt_answer)
    problem = problem_variant(r, w, h) if r.random() < 0.2 else problem_for(w, h)
    return resp, gtt, problem


def r1v_case(r):
    gt_answer = r.choice(OPTIONS + ["3", "1/2", "0.5", "\\frac{1}{2}", "(1, 2)", "A", "B", "yes", "10%", "x^2"])
    k = r.randrange(12)
    ans = gt_answer
    if k == 1:
        ans = gt_answer.upper()
    elif k == 2:
        ans = r.choice(OPTIONS + ["2", "1/3", "(A)", "(b)", "b", "a", "x**2", "\\text{(B) behind}", "3.0", "3,000"])
    elif k == 3:
        ans = " " + gt_answer.replace(" ", "  ") + r.choice(UNI_WS)
    elif k == 4:
        ans = gt_answer + "."
    elif k == 5:
        ans = "$" + gt_answer + "$"
    elif k == 6:
        ans = gt_answer.split(") ", 1)[-1]
    think = r.choice(["reasoning", "multi\nline", "", "<think>nested</think>"])
    sep = r.choice(["", "\n", " \u3000", "x"])
    resp = f"<think>{think}</think>{sep}<answer>{ans}</answer>"
    if r.random() < 0.2:
        resp = r.choice([resp + " ", "pre" + resp, ans, resp.replace("</answer>", ""), f"<answer>{ans}\n</answer>",
                         resp.replace("<think>", "")])
    gt = f"<answer>{gt_answer}</answer>" if r.random() < 0.7 else gt_answer
    if r.random() < 0.05:
        gt = r.choice(["", "<answer>\n(B)</answer>", "<answer></answer>", "(B) behind</answer>"])
    return resp, gt, ""


def typical_group(r, group):
    """A GRPO group of well-formed responses to one 2-12-object ground truth, written the way the
    policy writes them (json.dumps layout): small jitter, a dropped or repeated object now and then,
    overlapping GT objects and repeated labels (near-ties and ties in the matching), a wrong answer
    a quarter of the time."""
    w, h = r.choice([(800, 600), (640, 480), (1024, 768)])
    gt = make_gt(r, w, h, n_obj=r.randint(2, 12), n_rel=r.randint(0, 2))
    for o in gt["objects"]:
        if r.random() < 0.2:  # overlap another object almost exactly
            o["bbox"] = jitter(r, r.choice(gt["objects"])["bbox"], 1)
    gt_answer = r.choice(OPTIONS)
    rows = []
    for _ in range(group):
        objs = []
        for o in gt["objects"]:
            mode = r.random()
            if mode < 0.1:
                continue
            objs.append({"id": o["id"], "bbox": jitter(r, o["bbox"], r.choice([0, 1, 3, 12]))})
            if mode > 0.95:
                objs.append({"id": o["id"].split(".")[0] + ".99", "bbox": list(o["bbox"])})
        pred = {"objects": objs, "relationships": gt["relationships"]}
        answer = gt_answer if r.random() < 0.75 else r.choice(OPTIONS)
        resp = (f"<observe>Several objects.</observe>\n<scene>\n{json.dumps(pred)}\n</scene>\n"
                f"<think>Compare depths.</think>\n<answer>{answer}</answer>")
        rows.append((resp, gt_text(json.dumps(gt), gt_answer), problem_for(w, h)))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reward", default="spatial", choices=["spatial", "r1v"])
    ap.add_argument("--output", required=True)
    ap.add_argument("--typical", type=int, default=0, metavar="GROUP",
                    help="instead of adversarial cases: well-formed GRPO groups of this size (see typical_group)")
    args = ap.parse_args()
    r = random.Random(args.seed)
    if args.typical:
        rows = []
        while len(rows) < args.n:
            rows.extend(typical_group(r, args.typical))
        rows = rows[:args.n]
    else:
        rows = golden(r) if args.reward == "spatial" else []
    while len(rows) < args.n:
        rows.append(spatial_case(r) if args.reward == "spatial" else r1v_case(r))
    with open(args.output, "w", encoding="utf-8") as f:
        for i, (resp, gt, prob) in enumerate(rows):
            f.write(json.dumps({"id": i, "response": resp, "ground_truth": gt, "problem": prob}) + "\n")


if __name__ == "__main__":
    main()
