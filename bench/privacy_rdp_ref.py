# Pure-Python port of Opacus' opacus/accountants/analysis/rdp.py (itself TF Privacy's
# rdp_accountant.py): compute_rdp + get_privacy_spent, with math instead of numpy/scipy.
import math
def log_add(a,b):
    lo,hi=min(a,b),max(a,b)
    if lo==-math.inf: return hi
    return math.log1p(math.exp(lo-hi))+hi
def log_sub(a,b):
    if b==-math.inf: return a
    if a==b: return -math.inf
    try: return math.log(math.expm1(a-b))+b
    except OverflowError: return a
def binom(a,i):
    # generalized binomial via product (scipy.special.binom semantics)
    r=1.0
    for k in range(i): r*= (a-k)/(k+1)
    return r
def log_erfc(x):
    e=math.erfc(x)
    if e>0: return math.log(e)
    x2=x*x
    return -x2-math.log(x)-0.5*math.log(math.pi)+math.log1p(-0.5/x2+0.75/x2**2-1.875/x2**3)
def log_a_int(q,s,a):
    la=-math.inf
    for i in range(a+1):
        c=math.log(math.comb(a,i))+i*math.log(q)+(a-i)*math.log(1-q)
        la=log_add(la,c+(i*i-i)/(2*s*s))
    return la
def log_a_frac(q,s,a):
    a0=a1=-math.inf; i=0
    z0=s*s*math.log(1/q-1)+0.5
    while True:
        coef=binom(a,i); lc=math.log(abs(coef)); j=a-i
        t0=lc+i*math.log(q)+j*math.log(1-q); t1=lc+j*math.log(q)+i*math.log(1-q)
        e0=math.log(0.5)+log_erfc((i-z0)/(math.sqrt(2)*s)); e1=math.log(0.5)+log_erfc((z0-j)/(math.sqrt(2)*s))
        s0=t0+(i*i-i)/(2*s*s)+e0; s1=t1+(j*j-j)/(2*s*s)+e1
        if coef>0: a0=log_add(a0,s0); a1=log_add(a1,s1)
        else: a0=log_sub(a0,s0); a1=log_sub(a1,s1)
        i+=1
        if max(s0,s1)<-30: break
    return log_add(a0,a1)
def rdp(q,s,a):
    if q==0: return 0
    if q==1: return a/(2*s*s)
    la=log_a_int(q,s,int(a)) if float(a).is_integer() else log_a_frac(q,s,a)
    return la/(a-1)
def spent(orders,r,delta):
    best=(math.inf,None)
    for a,x in zip(orders,r):
        e=x-(math.log(delta)+math.log(a))/(a-1)+math.log((a-1)/a)
        if e<best[0]: best=(e,a)
    return best
alphas=[1+x/10.0 for x in range(1,100)]+list(range(12,64))   # Opacus DEFAULT_ALPHAS
# Opacus docstring example (published): [(1e-5,1.0,10),(1e-4,3.0,4)], orders 2..32 -> (0.336, 23)
orders=list(range(2,33))
r=[rdp(1e-5,1.0,a)*10+rdp(1e-4,3.0,a)*4 for a in orders]
print("docstring", spent(orders,r,1e-5))
for q,s,steps,d in [(0.01,1.1,10000,1e-5),(256/60000,1.1,60*60000//256,1e-5),(0.02,0.8,1000,1e-5),(1.0,2.0,20,1e-5),(0.1,4.0,500,1e-6)]:
    r=[rdp(q,s,a)*steps for a in alphas]
    e,a=spent(alphas,r,d)
    print(f"q={q!r} sigma={s} steps={steps} delta={d}: eps={e!r} order={a} rdp_at_order={r[alphas.index(a)]!r}")
