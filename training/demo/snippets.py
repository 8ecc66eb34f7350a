"""Small, complete programs in the non-Python languages kiln's code filter supports, written for the
embedded default landing zone (Python code there comes from the standard library itself). The
generator also derives broken copies of them, so every grammar has valid and invalid input."""

SNIPPETS = {
    "javascript/debounce.js": """\
'use strict';

/** Calls `fn` once calls have stopped arriving for `wait` milliseconds. */
function debounce(fn, wait) {
  let timer = null;
  return function debounced(...args) {
    clearTimeout(timer);
    timer = setTimeout(() => fn.apply(this, args), wait);
  };
}

class Emitter {
  constructor() {
    this.handlers = new Map();
  }

  on(event, handler) {
    const list = this.handlers.get(event) || [];
    list.push(handler);
    this.handlers.set(event, list);
    return () => this.handlers.set(event, list.filter((h) => h !== handler));
  }

  emit(event, payload) {
    for (const handler of this.handlers.get(event) || []) {
      handler(payload);
    }
  }
}

module.exports = { debounce, Emitter };
""",
    "typescript/lru.ts": """\
export interface Cache<K, V> {
  get(key: K): V | undefined;
  set(key: K, value: V): void;
  readonly size: number;
}

/** A least-recently-used cache on top of Map's insertion order. */
export class LruCache<K, V> implements Cache<K, V> {
  private readonly items = new Map<K, V>();

  constructor(private readonly capacity: number) {
    if (capacity < 1) {
      throw new RangeError(`capacity must be positive, got ${capacity}`);
    }
  }

  get size(): number {
    return this.items.size;
  }

  get(key: K): V | undefined {
    const value = this.items.get(key);
    if (value !== undefined) {
      this.items.delete(key);
      this.items.set(key, value);
    }
    return value;
  }

  set(key: K, value: V): void {
    this.items.delete(key);
    this.items.set(key, value);
    if (this.items.size > this.capacity) {
      const oldest = this.items.keys().next().value as K;
      this.items.delete(oldest);
    }
  }
}
""",
    "typescript/badge.tsx": """\
type BadgeProps = { label: string; count: number; tone?: "info" | "warn" };

export function Badge({ label, count, tone = "info" }: BadgeProps) {
  const text = count > 99 ? "99+" : String(count);
  return (
    <span className={`badge badge-${tone}`} title={label}>
      {label} <strong>{text}</strong>
    </span>
  );
}
""",
    "java/Search.java": """\
import java.util.Arrays;

public final class Search {
    private Search() {}

    /** Index of {@code target} in the sorted array, or -(insertion point) - 1. */
    public static int binarySearch(int[] sorted, int target) {
        int lo = 0;
        int hi = sorted.length - 1;
        while (lo <= hi) {
            int mid = (lo + hi) >>> 1;
            if (sorted[mid] < target) {
                lo = mid + 1;
            } else if (sorted[mid] > target) {
                hi = mid - 1;
            } else {
                return mid;
            }
        }
        return -(lo + 1);
    }

    public static void main(String[] args) {
        int[] values = {9, 2, 7, 4, 5};
        Arrays.sort(values);
        System.out.println(binarySearch(values, 7));
    }
}
""",
    "c/list.c": """\
#include <stdio.h>
#include <stdlib.h>

struct node {
    int value;
    struct node *next;
};

static struct node *push(struct node *head, int value) {
    struct node *n = malloc(sizeof *n);
    if (n == NULL) {
        perror("malloc");
        exit(1);
    }
    n->value = value;
    n->next = head;
    return n;
}

static struct node *reverse(struct node *head) {
    struct node *prev = NULL;
    while (head != NULL) {
        struct node *next = head->next;
        head->next = prev;
        prev = head;
        head = next;
    }
    return prev;
}

int main(void) {
    struct node *list = NULL;
    for (int i = 0; i < 5; i++) {
        list = push(list, i * i);
    }
    for (struct node *n = reverse(list); n != NULL; n = n->next) {
        printf("%d\\n", n->value);
    }
    return 0;
}
""",
    "cpp/stack.cpp": """\
#include <iostream>
#include <stdexcept>
#include <vector>

template <typename T>
class Stack {
public:
    void push(T value) { items_.push_back(std::move(value)); }

    T pop() {
        if (items_.empty()) {
            throw std::out_of_range("pop from an empty stack");
        }
        T top = std::move(items_.back());
        items_.pop_back();
        return top;
    }

    [[nodiscard]] bool empty() const noexcept { return items_.empty(); }

private:
    std::vector<T> items_;
};

int main() {
    Stack<std::string> s;
    for (const auto *word : {"kiln", "fires", "clay"}) {
        s.push(word);
    }
    while (!s.empty()) {
        std::cout << s.pop() << '\\n';
    }
}
""",
    "go/wordcount.go": """\
package main

import (
\t"bufio"
\t"fmt"
\t"os"
\t"sort"
\t"strings"
)

type entry struct {
\tword  string
\tcount int
}

func main() {
\tcounts := map[string]int{}
\tscanner := bufio.NewScanner(os.Stdin)
\tscanner.Split(bufio.ScanWords)
\tfor scanner.Scan() {
\t\tcounts[strings.ToLower(scanner.Text())]++
\t}
\tentries := make([]entry, 0, len(counts))
\tfor w, c := range counts {
\t\tentries = append(entries, entry{w, c})
\t}
\tsort.Slice(entries, func(i, j int) bool { return entries[i].count > entries[j].count })
\tfor _, e := range entries {
\t\tfmt.Printf("%6d %s\\n", e.count, e.word)
\t}
}
""",
    "rust/shapes.rs": """\
use std::f64::consts::PI;

trait Area {
    fn area(&self) -> f64;
}

#[derive(Debug)]
enum Shape {
    Circle { radius: f64 },
    Rect { width: f64, height: f64 },
}

impl Area for Shape {
    fn area(&self) -> f64 {
        match self {
            Shape::Circle { radius } => PI * radius * radius,
            Shape::Rect { width, height } => width * height,
        }
    }
}

fn main() {
    let shapes = vec![Shape::Circle { radius: 1.5 }, Shape::Rect { width: 2.0, height: 3.0 }];
    let total: f64 = shapes.iter().map(Area::area).sum();
    for s in &shapes {
        println!("{:?} has area {:.2}", s, s.area());
    }
    println!("total {total:.2}");
}
""",
}

# Prose in Chinese written for kiln's default corpus, so the text filters meet a script without
# spaces between words.
CHINESE_PROSE = [
    "窑是烧制陶瓷的设备。陶工把晾干的坯体放进窑里，慢慢升高温度，让黏土中的水分和有机物逐渐散去，"
    "再在高温下使矿物熔融、结晶，最终得到坚硬而致密的器物。温度曲线稍有偏差，整窑作品就可能开裂或变形。",
    "数据清洗是训练语言模型之前最费时的工作之一。原始数据里混杂着重复的网页、乱码、广告和格式错误的记录，"
    "如果不加处理就直接用于训练，模型会学到大量噪声，评估结果也会因为训练集和测试集重叠而虚高。",
    "课程学习的想法来自人类的教育经验：先学简单的内容，再逐步过渡到困难的内容。"
    "在模型训练中，可以先用短句和常见词汇组成的样本，再加入长文档、代码和需要推理的材料。",
    "图像和文字的对齐质量直接影响多模态模型的表现。如果一张猫的照片配的说明是“一辆红色的汽车”，"
    "模型就会被误导，因此需要用相似度模型检查每一对图文，并剔除明显不一致的样本。",
    "代码数据的一个简单而有效的检查是语法解析：无法解析的文件往往是截断的片段、合并冲突留下的标记，"
    "或者根本不是源代码。用语法分析器逐个检查文件，可以在不运行代码的情况下排除这些样本。",
    "分词器决定了模型看到的基本单位。字节级的分词方法可以覆盖任何语言和符号，不会出现未知字符，"
    "而合并规则则让常见的词和词根变成单个标记，从而缩短序列、降低训练成本。",
]
